"""Benchmark: gradscope's whole recurrent analysis against the brute-force reference loop.

Model: a 2-layer LSTM(32 -> 128), 100 steps, float64, default settings. The reference steps
PyTorch's own module one step at a time and, per step, takes the state Jacobian with
``torch.autograd.functional.jacobian``, its eigenvalues, its largest singular value and one QR
step of the Lyapunov frame. Both run in this process, best of ``--repeat``; the ratio is printed
(gradscope without ``--what-if``: the measurement against the reference). The measured fixes
(``--what-if``, on by default) are timed beside it, as their cost against the analysis alone:
this model vanishes, so its forget-gate bias is applied to a copy and measured once more.
Then the command line is timed on the same model saved to a file, start-up included (with and
without the measured fixes), beside the API in a fresh process and a bare ``import torch``:
the cold start's cost over the warm analysis is mostly torch's own import.

    python benchmarks/bench_recurrent.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gradscope

from tests.helpers import reference

STEPS = 100
#: In process, against the reference; the command line (no fixes), start-up included.
TARGET_RATIO = 30.0
TARGET_COMMAND_RATIO = 8.0
#: The command line's start-up over the warm analysis.
TARGET_COLD_START = 1.0


def build_model() -> nn.Module:
    """The benchmark model: a 2-layer LSTM(32 -> 128) in float64."""
    torch.manual_seed(0)
    return nn.LSTM(32, 128, num_layers=2).double()


def reference_analysis(model: nn.Module, exponents: int = 8) -> None:
    """Per step: autograd Jacobian, eigenvalues, largest singular value, one QR step."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(STEPS, 1, model.input_size, generator=generator, dtype=torch.float64)
    for layer in range(model.num_layers):
        inputs = reference.layer_input(model, x, layer).detach()
        cell = reference.single_layer(model, layer, reverse=False)
        steps = reference.trajectory(cell, inputs)
        n = steps[0][1].shape[-1]
        frame = torch.linalg.qr(torch.randn(n, exponents, dtype=torch.float64))[0]
        for jacobian in reference.jacobians(cell, steps):
            torch.linalg.eigvals(jacobian).abs().max()
            torch.linalg.svdvals(jacobian)[0]
            frame, _ = torch.linalg.qr(jacobian @ frame)


def best_of(repeat: int, work) -> float:
    """The fastest of ``repeat`` timed runs of ``work()``, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def time_commands(model: nn.Module, repeat: int) -> dict[str, float]:
    """Seconds, start-up included: the command line with and without fixes, the API in a
    fresh process, and importing torch alone."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "lstm.pt"
        torch.save(model, path)
        cli = [sys.executable, "-m", "gradscope", "analyze", str(path), "--format", "json"]
        script = f"import gradscope; gradscope.analyze({str(path)!r}, what_if=False)"
        commands = {
            "cli": [*cli, "--no-what-if"],
            "cli_fixes": cli,
            "api": [sys.executable, "-c", script],
            "torch": [sys.executable, "-c", "import torch"],
        }
        return {
            name: best_of(repeat, lambda c=command: subprocess.run(c, capture_output=True))
            for name, command in commands.items()
        }


def main() -> int:
    """Run both, print the figures and whether gradscope is at least 10x faster."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    model = build_model()
    gradscope.analyze(nn.LSTM(4, 4).double(), steps=10)  # one-time torch.func warm-up
    ours = best_of(args.repeat, lambda: gradscope.analyze(model, steps=STEPS, what_if=False))
    with_fixes = best_of(args.repeat, lambda: gradscope.analyze(model, steps=STEPS))
    brute = best_of(args.repeat, lambda: reference_analysis(model))
    commands = time_commands(model, args.repeat)
    ratio = brute / ours
    command_ratio = brute / commands["cli"]
    cold = commands["cli"] - ours
    print(f"model: 2-layer LSTM(32 -> 128), {STEPS} steps, float64, torch {torch.__version__}")
    print(f"reference loop (autograd jacobian + eig + svd + QR per step): {brute:.2f} s")
    print(f"gradscope.analyze (--no-what-if), spectra at every step:     {ours:.2f} s")
    print(f"ratio in process: {ratio:.1f}x (target >= {TARGET_RATIO:.0f}x)")
    print(f"gradscope.analyze (default, fixes measured on a copy):       {with_fixes:.2f} s")
    print(f"cost of the measured fixes: {with_fixes / ours:.2f}x the analysis alone")
    print(f"command line --no-what-if, start-up included:                {commands['cli']:.2f} s")
    print(
        f"ratio, command line against the reference: {command_ratio:.1f}x "
        f"(target >= {TARGET_COMMAND_RATIO:.0f}x)"
    )
    print(f"cold start over the warm analysis: {cold:.2f} s (target <= {TARGET_COLD_START:.0f} s)")
    print(f"  of which importing torch alone (fresh process):           {commands['torch']:.2f} s")
    print(f"command line, default (fixes measured):   {commands['cli_fixes']:.2f} s")
    print(f"the analysis by the API in a fresh Python process:          {commands['api']:.2f} s")
    met = ratio >= TARGET_RATIO and command_ratio >= TARGET_COMMAND_RATIO
    return 0 if met and cold <= TARGET_COLD_START else 1


if __name__ == "__main__":
    raise SystemExit(main())
