"""What the depth view costs, as a multiple of one forward and backward pass of the model.

``--model mlp`` (the default): an MLP of 50 (Linear 512 -> 512, ReLU) layers, He init, batch
64, float64 (gradscope's default dtype), default estimator settings. Both timings run in this
process, on this machine. Then the cost of the measured fixes (``--what-if``, on by default):
the same stack with sigmoid in place of ReLU vanishes, and each fix gradscope proposes is
applied to a copy and measured; the analysis with them is timed against the analysis without.

``--model resnet18``: a ResNet-18 (torchvision's when it is installed, else the same network
built here), eval mode, float32, batch 8 at 224 x 224 (``--batch``, ``--size``), default
estimator settings: the depth view against one forward and backward pass (target: at most 8x).

    python benchmarks/bench_depth.py [--repeat 5] [--depth 50] [--width 512] [--batch 64]
    python benchmarks/bench_depth.py --model resnet18 [--repeat 3] [--batch 8] [--size 224]

``--threads N`` sets torch's thread count (on a shared machine, 1 gives steadier ratios).
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


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock: two 3x3 convolutions, a skip (a projection when the
    block changes shape)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class ResNet18(nn.Module):
    """torchvision's ResNet-18, layer for layer (same modules, names and init)."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]
        for index, (inplanes, planes, stride) in enumerate(widths, start=1):
            layer = nn.Sequential(BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes))
            self.add_module(f"layer{index}", layer)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18() -> tuple[nn.Module, str]:
    """A ResNet-18 in eval mode, float32, and whose it is."""
    torch.manual_seed(0)
    try:
        from torchvision.models import resnet18 as torchvision_resnet18

        return torchvision_resnet18().float().eval(), "torchvision's resnet18"
    except ImportError:
        return ResNet18().float().eval(), "ResNet-18 built in this script (no torchvision)"


def median_time(run, repeat: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def pass_and_depth_view(
    model: nn.Module, probe, settings: AnalysisOptions, passes: int, repeat: int
) -> tuple[float, float]:
    """Median seconds of one forward and backward pass of ``model`` on the probe's input
    (over ``passes`` runs), and of its depth view (over ``repeat``)."""
    x = probe.inputs.detach()

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        model(x.clone().requires_grad_(True)).sum().backward()

    def depth_view() -> None:
        with torch.enable_grad():
            measure_depth(model, probe, settings)

    return median_time(forward_backward, passes), median_time(depth_view, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--batch", type=int, default=None, help="64 (mlp), 8 (resnet18)")
    parser.add_argument("--model", choices=["mlp", "resnet18"], default="mlp")
    parser.add_argument("--size", type=int, default=224, help="resnet18's image size")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model == "resnet18":
        bench_resnet(args)
        return
    args.batch = args.batch or 64
    model = build(args.depth, args.width)
    settings = AnalysisOptions(batch=args.batch)
    probe = make_probe(model, settings, torch.device("cpu"))
    # one pass is short and noisy: sample it more
    baseline, depth = pass_and_depth_view(model, probe, settings, 5 * args.repeat, args.repeat)
    whole = median_time(lambda: gradscope.analyze(model, batch=args.batch), args.repeat)
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


def bench_resnet(args: argparse.Namespace) -> None:
    """The depth view of a ResNet-18 against one forward and backward pass, float32."""
    batch = args.batch or 8
    model, which = resnet18()
    shape = (batch, 3, args.size, args.size)
    settings = AnalysisOptions(batch=batch, dtype="float32", input_shape=shape)
    probe = make_probe(model, settings, torch.device("cpu"))
    baseline, depth = pass_and_depth_view(model, probe, settings, 2 * args.repeat, args.repeat)
    with torch.enable_grad():
        found = measure_depth(model, probe, settings)
    print(
        f"model: {which}, eval mode, batch {batch} x 3 x {args.size} x {args.size}, float32, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(
        f"estimator: {settings.chi_probes} chi probes, {settings.power_iterations} power "
        f"iterations; {found.stack.blocks} blocks, {found.stack.residual_blocks} residual"
    )
    print(f"one forward + backward pass of the model:  {baseline * 1e3:8.1f} ms")
    print(f"depth view (measure_depth):                {depth * 1e3:8.1f} ms")
    print(f"cost of the depth view: {depth / baseline:.1f}x one forward + backward (target <= 8x)")


if __name__ == "__main__":
    main()
