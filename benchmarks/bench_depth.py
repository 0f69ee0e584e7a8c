"""What the depth view costs, as a multiple of one forward and backward pass of the model.

Model: an MLP of 50 (Linear 512 -> 512, ReLU) layers, He init, batch 64, float64 (gradscope's
default dtype), default estimator settings. Both timings run in this process, on this machine.
Then the cost of the measured fixes (``--what-if``, on by default): the same stack with sigmoid
in place of ReLU vanishes, and each fix gradscope proposes is applied to a copy and measured;
the analysis with them is timed against the analysis without.

    python benchmarks/bench_depth.py [--repeat 5] [--depth 50] [--width 512] [--batch 64]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import gradscope
from gradscope.depth.measure import measure_depth
from gradscope.options import AnalysisOptions
from gradscope.probe import make_probe


def build(depth: int, width: int, activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        linear = nn.Linear(width, width)
        nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
        layers += [linear, activation()]
    return nn.Sequential(*layers).double()


def median_time(run, repeat: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    model = build(args.depth, args.width)
    settings = AnalysisOptions(batch=args.batch)
    probe = make_probe(model, settings, torch.device("cpu"))
    x = probe.inputs.detach()

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        leaf = x.clone().requires_grad_(True)
        model(leaf).sum().backward()

    def depth_view() -> None:
        with torch.enable_grad():
            measure_depth(model, probe, settings)

    def whole_analysis() -> None:
        gradscope.analyze(model, batch=args.batch)

    baseline = median_time(forward_backward, 5 * args.repeat)  # short and noisy: sample more
    depth = median_time(depth_view, args.repeat)
    whole = median_time(whole_analysis, args.repeat)
    print(
        f"model: {args.depth} x (Linear {args.width} -> {args.width}, ReLU), batch {args.batch}, "
        f"float64, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(
        f"estimator: {settings.chi_probes} chi probes, {settings.power_iterations} power iterations"
    )
    print(f"one forward + backward pass of the model:  {baseline * 1e3:8.1f} ms")
    print(f"depth view (measure_depth):                {depth * 1e3:8.1f} ms")
    print(f"whole gradscope.analyze (copy, probe, ...): {whole * 1e3:8.1f} ms")
    print(f"cost of the depth view: {depth / baseline:.1f}x one forward + backward (target < 10x)")
    print(f"cost of the whole analysis: {whole / baseline:.1f}x")
    vanishing = build(args.depth, args.width, nn.Sigmoid)
    report = gradscope.analyze(vanishing, batch=args.batch)
    measured = [fix.id for fix in report.fixes if fix.effect]
    alone = median_time(lambda: gradscope.analyze(vanishing, batch=args.batch, what_if=False), 1)
    fixes = median_time(lambda: gradscope.analyze(vanishing, batch=args.batch), 1)
    print(
        f"with sigmoid ({report.status}): {len(measured)} fixes measured on copies "
        f"({', '.join(measured)}): {fixes / alone:.1f}x the analysis without them"
    )


if __name__ == "__main__":
    main()
