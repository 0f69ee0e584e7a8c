"""Fixes over depth applied to a copy of the model: each takes the copy, the judged stack and
its blocks, the seed and the probe, and gives the fixed model (the copy, or a container
rebuilt around it) with what it changed, or raises
:class:`~gradscope.whatif.apply.NotApplied`.

The init gain (He init with the activation's gain), orthogonal weights with that gain,
saturating activations swapped for ReLU with He init, each residual branch's last layer scaled
by the snippet's factor, identity skips around the blocks that keep their shape, and a norm
after each Linear/Conv of the saturated or dead blocks (BatchNorm's statistics taken from the
probe, as a first training pass would start them).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from gradscope.diagnosis.rules import (
    branch_scale,
    he_nonlinearity,
    inactive_blocks,
    residual_layers,
    skip_plan,
    swapped_activation_blocks,
)
from gradscope.probe import Probe, run_model
from gradscope.report import DepthLayer, DepthStack, FixId
from gradscope.taxonomy import saturates
from gradscope.whatif.apply import NotApplied, seeded

#: An applier over depth: (copy, stack, blocks, seed, probe) -> (fixed model, what changed).
OverDepth = Callable[[nn.Module, DepthStack, list[DepthLayer], int, Probe], tuple[nn.Module, str]]
#: The parametrised layers a fix re-initialises, as the snippets do.
LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: The norm after a convolution, by its class.
NORMS = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d}


def _paths(layers: list[DepthLayer]) -> list[str]:
    """Every module path of the blocks, once, in order."""
    return list(dict.fromkeys(path for layer in layers for path in layer.modules or [layer.name]))


def _layers_under(model: nn.Module, paths: list[str]) -> list[nn.Module]:
    """The Linear/Conv modules inside the modules at ``paths``, once each."""
    found: dict[int, nn.Module] = {}
    for path in paths:
        for module in model.get_submodule(path).modules():
            if isinstance(module, LAYERS):
                found.setdefault(id(module), module)
    return list(found.values())


def _redraw(
    model: nn.Module, paths: list[str], seed: int, init: Callable[..., Tensor], **kwargs: object
) -> int:
    """Each Linear/Conv weight under ``paths`` drawn anew by ``init`` (an ``nn.init``
    function, from ``seed``), its bias zeroed; how many."""
    layers = _layers_under(model, paths)
    if not layers:
        raise NotApplied("the blocks hold no Linear or Conv layer to re-initialise")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in layers:
            layer.weight.copy_(seeded(init, layer.weight, generator, **kwargs))
            if layer.bias is not None:
                layer.bias.zero_()
    return len(layers)


def _plain(layers: list[DepthLayer]) -> list[str]:
    return _paths([layer for layer in layers if not layer.residual])


def _init_gain(
    model: nn.Module, stack: DepthStack, layers: list[DepthLayer], seed: int, probe: Probe
) -> tuple[nn.Module, str]:
    """kaiming_normal_ with the nonlinearity the snippet names, drawn from ``seed``."""
    nonlinearity = he_nonlinearity(stack, layers)
    init = nn.init.kaiming_normal_
    count = _redraw(model, _plain(layers), seed, init, nonlinearity=nonlinearity)
    return model, f"kaiming_normal_ ({nonlinearity}) in {count} layer(s), biases zero"


def _orthogonal(
    model: nn.Module, stack: DepthStack, layers: list[DepthLayer], seed: int, probe: Probe
) -> tuple[nn.Module, str]:
    """orthogonal_ with the activation's gain, drawn from ``seed``."""
    nonlinearity = he_nonlinearity(stack, layers)
    gain = nn.init.calculate_gain(nonlinearity)
    count = _redraw(model, _plain(layers), seed, nn.init.orthogonal_, gain=gain)
    return model, f"orthogonal weights (gain {gain:.3g}) in {count} layer(s), biases zero"


def _change_activation(
    model: nn.Module, stack: DepthStack, layers: list[DepthLayer], seed: int, probe: Probe
) -> tuple[nn.Module, str]:
    """Each saturating activation module in the swapped blocks made ReLU, then He init."""
    paths = _paths(swapped_activation_blocks(layers))
    swapped = 0
    for path in paths:
        for name, module in list(model.get_submodule(path).named_modules()):
            if saturates(type(module).__name__):
                model.set_submodule(f"{path}.{name}" if name else path, nn.ReLU())
                swapped += 1
    if not swapped:
        raise NotApplied(
            "the saturating activations are called as functions in forward(), not modules "
            "gradscope can swap on a copy"
        )
    count = _redraw(model, paths, seed, nn.init.kaiming_normal_, nonlinearity="relu")
    return model, f"{swapped} activation(s) made ReLU, He init in {count} layer(s)"


def _scale_branches(
    model: nn.Module, stack: DepthStack, layers: list[DepthLayer], seed: int, probe: Probe
) -> tuple[nn.Module, str]:
    """Each residual branch's last layer (weight and bias) times the snippet's factor."""
    scale, _, why = branch_scale(stack, layers)
    known = [layer.branch_last for layer in residual_layers(layers) if layer.branch_last]
    if not known:
        raise NotApplied("no residual branch's last layer was found to scale")
    with torch.no_grad():
        for path in known:
            layer = model.get_submodule(path)
            for parameter in (getattr(layer, "weight", None), getattr(layer, "bias", None)):
                if isinstance(parameter, Tensor):
                    parameter.mul_(scale)
    return model, f"the last layer of {len(known)} residual branch(es) scaled by {why}"


class Skip(nn.Module):
    """``x + f(x)`` around a block, other arguments passed on to it."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.branch = layers[0] if len(layers) == 1 else nn.Sequential(*layers)

    def forward(self, x: Tensor, *args: object, **kwargs: object) -> Tensor:
        return x + self.branch(x, *args, **kwargs)


def _regrouped(container: nn.Module, blocks: list[DepthLayer]) -> nn.Module:
    """A container's children with each block's (consecutive) children inside one Skip."""
    children = list(container.children())
    spans = {min(layer.indices): len(layer.indices) for layer in blocks}
    new, index = [], 0
    while index < len(children):
        size = spans.get(index, 1)
        chunk = children[index : index + size]
        new.append(Skip(*chunk) if index in spans else chunk[0])
        index += size
    return nn.ModuleList(new) if isinstance(container, nn.ModuleList) else nn.Sequential(*new)


def _skips(
    model: nn.Module, stack: DepthStack, layers: list[DepthLayer], seed: int, probe: Probe
) -> tuple[nn.Module, str]:
    """Identity skips around the shape-keeping blocks, as the snippet places them."""
    plan = skip_plan(layers)
    wrapped = 0
    for path in plan.singles:
        model.set_submodule(path, Skip(model.get_submodule(path)))
        wrapped += 1
    for parent, blocks in plan.grouped.items():
        container = model.get_submodule(parent)
        if not isinstance(container, (nn.Sequential, nn.ModuleList)):
            continue
        rebuilt = _regrouped(container, blocks)
        if parent:
            model.set_submodule(parent, rebuilt)
        elif isinstance(rebuilt, nn.Sequential):
            model = rebuilt  # the model is the container
        else:
            continue
        wrapped += len(blocks)
    if not wrapped:
        raise NotApplied(
            "the blocks that keep their shape are joined in forward(), where the skip belongs"
        )
    left = f"; {len(plan.by_hand)} left to forward()" if plan.by_hand else ""
    return model, f"x + f(x) around {wrapped} block(s){left}"


def _calibrated(model: nn.Module, norms: list[nn.Module], probe: Probe) -> None:
    """BatchNorm's running statistics set from one pass over the probe (cumulative average),
    the rest of the model as it was: in eval mode a fresh BatchNorm would be the identity."""
    if not norms:
        return
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    with torch.no_grad():
        run_model(model, probe)
    for norm in norms:
        norm.eval()


def _normalization(
    model: nn.Module, stack: DepthStack, layers: list[DepthLayer], seed: int, probe: Probe
) -> tuple[nn.Module, str]:
    """LayerNorm after each Linear, BatchNorm after each Conv, in the inactive blocks."""
    inserted, batch_norms = 0, []
    for path in _paths(inactive_blocks(layers)):
        for name, module in list(model.get_submodule(path).named_modules()):
            full = f"{path}.{name}" if name else path
            weight = getattr(module, "weight", None)
            if not full:
                continue
            if isinstance(module, nn.Linear):
                norm: nn.Module = nn.LayerNorm(module.out_features)
            elif type(module) in NORMS:
                norm = NORMS[type(module)](module.out_channels)
                batch_norms.append(norm)
            else:
                continue
            if isinstance(weight, Tensor):
                norm = norm.to(device=weight.device, dtype=weight.dtype)
            model.set_submodule(full, nn.Sequential(module, norm.eval()))
            inserted += 1
    if not inserted:
        raise NotApplied(
            "the saturated or dead blocks hold no Linear or Conv to follow with a norm"
        )
    _calibrated(model, batch_norms, probe)
    return model, f"a norm after {inserted} layer(s)"


#: How each fix over depth is applied to a copy.
OVER_DEPTH: dict[FixId, OverDepth] = {
    FixId.INIT_GAIN: _init_gain,
    FixId.ORTHOGONAL_INIT: _orthogonal,
    FixId.CHANGE_ACTIVATION: _change_activation,
    FixId.SCALE_RESIDUAL_BRANCH: _scale_branches,
    FixId.RESIDUAL_CONNECTIONS: _skips,
    FixId.NORMALIZATION: _normalization,
}
