"""Check that ``--device cuda`` gives the CPU's numbers: every demo model, and saved programs.

The deep demo stacks compare their block gradients, chi and sigma_max too. A wide LSTM (state
2048, matrix-free spectra) is the GPU row of the speed benchmarks: its times are printed beside
the CPU's, and its numbers agree to the Krylov tolerance (its estimates stop where rounding
lets them, which differs between devices).

Run on a machine with a CUDA GPU: ``python benchmarks/check_cuda.py``. Each model is analysed in
float64 on the CPU and on the GPU with the same probe; exponents, horizons, spectra and gradient
norms must agree to ``--rtol``. Exits 1 on a mismatch, 2 when no GPU is there.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import gradscope
from gradscope.demo import DEMO_DEEP_MODELS, DEMO_MODELS, SequenceModel

#: Matrix-free spectra agree across devices to their tolerance, not to rounding.
KRYLOV_RTOL = 3e-3


def close(a: float | None, b: float | None, rtol: float) -> bool:
    """Equal within ``rtol``, None and non-finite values equal to themselves."""
    if a is None or b is None:
        return a is b
    if not (math.isfinite(a) and math.isfinite(b)):
        return (math.isnan(a) and math.isnan(b)) or a == b
    return abs(a - b) <= rtol * max(abs(a), abs(b), 1e-300)


def worst_difference(cpu: gradscope.Report, gpu: gradscope.Report) -> float:
    """The largest relative difference between two reports' numbers (inf for a mismatch)."""
    pairs: list[tuple[float | None, float | None]] = []
    if len(cpu.recurrent) != len(gpu.recurrent) or cpu.status != gpu.status:
        return math.inf
    for a, b in zip(cpu.recurrent, gpu.recurrent, strict=True):
        pairs += list(zip(a.lyapunov, b.lyapunov, strict=True))
        pairs += list(zip(a.grad_norm, b.grad_norm, strict=True))
        pairs.append((a.memory_horizon, b.memory_horizon))
        for key in ("spectral_radius", "sigma_max"):
            pairs.append((getattr(a.jacobian, key).median, getattr(b.jacobian, key).median))
    if len(cpu.layers) != len(gpu.layers):
        return math.inf
    for a, b in zip(cpu.layers, gpu.layers, strict=True):
        pairs += [(a.grad_norm, b.grad_norm), (a.chi, b.chi), (a.sigma_max, b.sigma_max)]
    if cpu.input_grad_norm is not None and gpu.input_grad_norm is not None:
        pairs += list(zip(cpu.input_grad_norm, gpu.input_grad_norm, strict=True))
    worst = 0.0
    for a, b in pairs:
        if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
            if not close(a, b, 0.0):
                return math.inf
            continue
        worst = max(worst, abs(a - b) / max(abs(a), abs(b), 1e-300))
    return worst


def input_gradients(cpu: gradscope.Report, gpu: gradscope.Report) -> str:
    """Where the whole model's input gradient was measured (an exported program is pinned to
    the device it was exported on, so it runs there only)."""
    where = [name for name, r in (("cpu", cpu), ("cuda", gpu)) if r.input_grad_norm is not None]
    return "+".join(where) or "none"


def saved_programs(folder: Path) -> dict[str, tuple[str, dict]]:
    """A TorchScript archive and an exported program of a 2-layer LSTM, saved from the GPU."""
    torch.manual_seed(0)
    model = SequenceModel(nn.LSTM(16, 32, 2, batch_first=True)).cuda().eval()
    scripted = folder / "scripted.pt"
    torch.jit.save(torch.jit.script(model), str(scripted))
    exported = folder / "exported.pt2"
    example = torch.randn(2, 30, 16, device="cuda")
    torch.export.save(torch.export.export(model, (example,)), str(exported))
    return {
        "torchscript (saved on GPU)": (str(scripted), {"trust": True, "steps": 30, "batch": 2}),
        "exported program (saved on GPU)": (str(exported), {"trust": True}),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtol", type=float, default=1e-6)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU here", file=sys.stderr)
        return 2
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    print(
        f"{'model':34} {'status':10} {'cpu s':>7} {'cuda s':>7} {'input grad':>10} "
        f"{'worst rel diff':>15}"
    )
    failed = False
    with tempfile.TemporaryDirectory() as folder:
        cases: dict[str, tuple[object, dict]] = {}
        for demo in DEMO_MODELS:
            torch.manual_seed(0)
            cases[demo.name] = (SequenceModel(demo.build()), {"steps": args.steps})
        for demo in DEMO_DEEP_MODELS:
            torch.manual_seed(0)
            cases[demo.name] = (demo.build(), {})
        cases.update(saved_programs(Path(folder)))
        torch.manual_seed(0)
        wide = {"steps": args.steps, "dtype": "float32", "what_if": False}
        cases["wide LSTM(64->1024), matrix-free"] = (nn.LSTM(64, 1024), wide)
        for name, (model, options) in cases.items():
            rtol = KRYLOV_RTOL if name.startswith("wide") else args.rtol
            start = time.perf_counter()
            cpu = gradscope.analyze(model, device="cpu", **options)
            middle = time.perf_counter()
            gpu = gradscope.analyze(model, device="cuda", **options)
            end = time.perf_counter()
            worst = worst_difference(cpu, gpu)
            failed |= not worst <= rtol
            print(
                f"{name:34} {gpu.status:10} {middle - start:7.2f} {end - middle:7.2f} "
                f"{input_gradients(cpu, gpu):>10} {worst:15.2e}"
                + ("" if worst <= rtol else "  MISMATCH")
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
