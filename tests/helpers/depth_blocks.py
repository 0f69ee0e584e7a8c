"""Small convolutional and attention blocks for the depth view's twins (torch, float64).

``Down`` is a ResNet downsampling block (torchvision's ``BasicBlock`` with a projection
shortcut), which also spells out its two paths by hand (``paths``), independently of
gradscope's hooks; ``Widen`` a plain block that changes shape; ``Gated`` a block with a 1x1
convolution child whose output gates the branch instead of being added to it; ``TwoPaths`` two
one-layer branches added (no shortcut beside a deeper branch).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _norms(*norms: nn.BatchNorm2d) -> None:
    """Running statistics and affine parameters off their defaults, so eval mode shows them."""
    generator = torch.Generator().manual_seed(0)
    for norm in norms:
        channels = norm.num_features
        with torch.no_grad():
            norm.running_mean.copy_(0.2 * torch.randn(channels, generator=generator))
            norm.running_var.copy_(0.5 + torch.rand(channels, generator=generator))
            norm.weight.copy_(0.8 + 0.4 * torch.rand(channels, generator=generator))
            norm.bias.copy_(0.1 * torch.randn(channels, generator=generator))


class Down(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + downsample(x))``, ``downsample`` a 1x1
    convolution of stride 2 and a batch norm."""

    def __init__(self, inplanes: int = 4, planes: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes, 1, 2, bias=False), nn.BatchNorm2d(planes)
        )
        _norms(self.bn1, self.bn2, self.downsample[1])

    def branch(self, x: Tensor) -> Tensor:
        return self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out += self.downsample(x)
        return self.relu(out)

    def paths(self, x: Tensor, s: Tensor) -> Tensor:
        """The block with the shortcut reading ``s`` and the branch ``x``, written out."""
        return torch.relu(self.branch(x) + self.downsample(s))


class Widen(nn.Module):
    """``relu(bn(conv(x)))`` from 4 to 8 channels at stride 2: no skip."""

    def __init__(self, inplanes: int = 4, planes: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(inplanes, planes, 3, 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        _norms(self.bn)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class Gated(nn.Module):
    """``branch(x) * sigmoid(gate(x))``, ``gate`` a 1x1 convolution of stride 2: a short child
    that reads the input but is multiplied in, not added."""

    def __init__(self, inplanes: int = 4, planes: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(inplanes, planes, 3, 2, 1)
        self.gate = nn.Conv2d(inplanes, planes, 1, 2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.conv(x)) * torch.sigmoid(self.gate(x))


class TwoPaths(nn.Module):
    """``relu(bn_a(conv_a(x)) + bn_b(conv_b(x)))``, a 3x3 and a 1x1 convolution of stride 2 side
    by side (a RepVGG block): two branches of one layer each, no shortcut beside a deeper one."""

    def __init__(self, inplanes: int = 4, planes: int = 8) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(inplanes, planes, 3, 2, 1, bias=False)
        self.bn_a = nn.BatchNorm2d(planes)
        self.conv_b = nn.Conv2d(inplanes, planes, 1, 2, bias=False)
        self.bn_b = nn.BatchNorm2d(planes)
        _norms(self.bn_a, self.bn_b)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.bn_a(self.conv_a(x)) + self.bn_b(self.conv_b(x)))


class Basic(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + x)``: the identity skip."""

    def __init__(self, planes: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        _norms(self.bn1, self.bn2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + x)


def downsampling_net() -> nn.Sequential:
    """A stem, a downsampling block, an identity block, a plain widening block, a head; float64,
    eval mode. Input (batch, 3, 8, 8)."""
    torch.manual_seed(0)
    return (
        nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            Down(4, 8),
            Basic(8),
            Widen(8, 16),
            nn.Flatten(),
            nn.Linear(16 * 2 * 2, 3),
        )
        .double()
        .eval()
    )
