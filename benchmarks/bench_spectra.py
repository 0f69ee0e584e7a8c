"""Benchmark: spectra of every step's Jacobian at any width, dense against matrix-free.

1. Where dense spectra stop paying: for LSTMs of growing state size, the spectral radius and
   sigma max of 100 steps' Jacobians by dense eigen- and singular values against the Krylov
   estimates (Arnoldi, Golub-Kahan), timed in this process, with the estimates' largest
   relative error against the dense values. gradscope switches to matrix-free spectra above
   ``DENSE_UP_TO`` dimensions.
2. Wide cells: ``gradscope.analyze`` of a 1-layer LSTM(64 -> H) over 200 steps in float32
   (the dtype models of this size run in), without measured fixes, every step's spectrum; each
   size in a fresh process, with its wall time and its peak resident memory beyond what the
   process held once the model was built (the weights and torch itself).

    python benchmarks/bench_spectra.py [--hidden 2048 4096] [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gradscope.recurrent.dynamics import dense_spectra, matrix_free_spectra
from gradscope.recurrent.linearised import jacobian_function, linearisation
from gradscope.recurrent.measure import DEFAULT_WORKSPACE, DENSE_UP_TO

from tests.helpers.trajectories import trajectory

STEPS = 100
WIDE_STEPS = 200
#: The targets for LSTM(64 -> 2048) over 200 steps.
WIDE_SECONDS, WIDE_BYTES = 20.0, 1 << 30

WIDE_RUN = """
import json, resource, sys, time, torch, gradscope
hidden, steps, dtype = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
model = torch.nn.LSTM(64, hidden)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
report = gradscope.analyze(model, steps=steps, dtype=dtype, what_if=False)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
core = report.recurrent[0]
print(json.dumps({"seconds": seconds, "beyond_kib": peak - before, "samples": core.jacobian.samples,
    "method": core.jacobian.method, "residual": [core.jacobian.residual.spectral_radius,
    core.jacobian.residual.sigma_max] if core.jacobian.residual else None,
    "weights_mib": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20}))
"""


def crossover(dtype: torch.dtype) -> None:
    """Dense against matrix-free spectra of 100 Jacobians, by state size."""
    print(f"100 step Jacobians of an LSTM, {dtype}: dense against matrix-free (Krylov) spectra")
    print(" state   dense s   krylov s   dense/krylov   max rel. error rho, sigma")
    for hidden in (32, 64, 96, 128, 256):
        torch.manual_seed(0)
        spec, weights, step, states, drives = trajectory(torch.nn.LSTM(32, hidden).to(dtype), STEPS)
        start = time.perf_counter()
        closed = jacobian_function(spec, weights)
        radius, sigma = dense_spectra(step, states, drives, closed, DEFAULT_WORKSPACE)
        dense = time.perf_counter() - start
        start = time.perf_counter()
        spectra = matrix_free_spectra(
            lambda s, u, sp=spec, w=weights: linearisation(sp, w, s, u),
            states,
            drives,
            DEFAULT_WORKSPACE,
            torch.Generator().manual_seed(0),
        )
        krylov = time.perf_counter() - start
        rho_error = float(((spectra.spectral_radius.values - radius) / radius).abs().max())
        sigma_error = float(((spectra.sigma_max.values - sigma) / sigma).abs().max())
        print(
            f"{spec.state_size:6d} {dense:9.3f} {krylov:10.3f} {dense / krylov:14.2f}"
            f"   {rho_error:.1e}, {sigma_error:.1e}"
        )
    print(f"gradscope: dense up to {DENSE_UP_TO} dimensions, matrix-free above")


def wide(hidden: int, dtype: str) -> dict:
    """One wide analysis in a fresh process: its figures as a dict."""
    run = subprocess.run(
        [sys.executable, "-c", WIDE_RUN, str(hidden), str(WIDE_STEPS), dtype],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> int:
    """Print the crossover table and the wide rows; exit 1 when the 2048 target is missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="*", default=[2048, 4096])
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--skip-crossover", action="store_true")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if not args.skip_crossover:
        crossover(torch.float64)
    met = True
    for hidden in args.hidden:
        figures = wide(hidden, args.dtype)
        beyond = figures["beyond_kib"] / 2**20
        print(
            f"LSTM(64 -> {hidden}), {WIDE_STEPS} steps, {args.dtype}: {figures['seconds']:.1f} s, "
            f"peak memory {beyond:.2f} GiB beyond the built model "
            f"(weights {figures['weights_mib']:.0f} MiB), spectra at {figures['samples']} steps "
            f"({figures['method']}, largest relative residuals rho "
            f"{figures['residual'][0]:.1g}, sigma {figures['residual'][1]:.1g})"
        )
        if hidden == 2048:
            ok = figures["seconds"] < WIDE_SECONDS and figures["beyond_kib"] * 1024 < WIDE_BYTES
            met = met and ok
            print(f"  target: under {WIDE_SECONDS:.0f} s and 1 GiB: {'met' if ok else 'missed'}")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
