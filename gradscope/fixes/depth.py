"""Fixes for deep stacks: code fitted to the measured blocks' module paths, and the evidence
that calls for each."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from gradscope.diagnosis.clauses import (
    activation_clause,
    chi_clause,
    dead_clause,
    init_name,
    residual_clause,
    saturation_clause,
    skip_clause,
    spread_clause,
)
from gradscope.diagnosis.rules import (
    branch_scale,
    dead_blocks,
    dominant_activation,
    he_nonlinearity,
    inactive_blocks,
    plain_chi,
    residual_layers,
    saturated_blocks,
    skip_plan,
    swapped_activation_blocks,
)
from gradscope.fixes.code import literal, module_expression, paths_list, progression
from gradscope.fixes.recurrent import OVER_TIME, clip_snippet
from gradscope.fixes.registry import Advice
from gradscope.report import DepthLayer, DepthStack, FixId, Status
from gradscope.taxonomy import SATURATING_KEYS, activation_key, saturates


def _block_paths(layers: Sequence[DepthLayer]) -> list[str]:
    """Every module path of the blocks, once, in order."""
    return list(dict.fromkeys(path for layer in layers for path in layer.modules or [layer.name]))


#: The parametrised layers snippets re-initialise.
LAYER_TYPES = "LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)"


def _each_weight(call: str) -> list[str]:
    """Loop over the Linear/Conv modules under ``paths`` and apply ``call`` to the weight."""
    return [
        LAYER_TYPES,
        "for path in paths:",
        "    for module in model.get_submodule(path).modules():",
        "        if isinstance(module, LAYERS):",
        f"            {call}",
        "            if module.bias is not None:",
        "                nn.init.zeros_(module.bias)",
    ]


def _kaiming(nonlinearity: str) -> str:
    return f'nn.init.kaiming_normal_(module.weight, nonlinearity="{nonlinearity}")'


RESIDUAL_CLASS = [
    "class Residual(nn.Module):",
    "    def __init__(self, *layers):",
    "        super().__init__()",
    "        self.branch = nn.Sequential(*layers)",
    "",
    "    def forward(self, x):",
    "        return x + self.branch(x)",
    "",
]


def _rebuild_container(parent: str, blocks: list[DepthLayer]) -> list[str]:
    """Rebuild a Sequential (or ModuleList) with each block's children inside a ``Residual``."""
    spans = {min(layer.indices): len(layer.indices) for layer in blocks}
    starts = sorted(spans)
    sizes = set(spans.values())
    span = progression(starts) if len(sizes) == 1 else None
    if span is not None:
        wrap = [f"wrap = {{i: {sizes.pop()} for i in {span}}}"]
    else:
        wrap = literal("wrap", [f"{start}: {spans[start]}" for start in starts], "{}")
    target = module_expression(parent)
    if parent:
        rebuild = [
            "if isinstance(old, nn.ModuleList):",
            f"    {target} = nn.ModuleList(new)",
            "else:",
            f"    {target} = nn.Sequential(*new)",
        ]
    else:
        rebuild = [f"{target} = nn.Sequential(*new)"]
    return [
        "# wrap: each block's first child -> its number of children.",
        "# The children are renumbered: re-save checkpoints after.",
        f"old = {target}",
        *wrap,
        "new, i = [], 0",
        "while i < len(old):",
        "    size = wrap.get(i, 1)",
        "    new.append(Residual(*old[i:i + size]) if i in wrap else old[i])",
        "    i += size",
        *rebuild,
    ]


def _skip_blocks(stack: DepthStack, layers: Sequence[DepthLayer]) -> str:
    """Wrap each shape-keeping block in ``x + f(x)``.

    A block of several children of one container (``Linear`` + ``Sigmoid``) is regrouped by
    rebuilding the container; a block that is one module is wrapped in place by its path; a
    block of several modules elsewhere needs its skip written in ``forward()``.
    """
    plan = skip_plan(layers)
    grouped, singles, by_hand = plan.grouped, plan.singles, plan.by_hand
    lines = [
        "# x + f(x): each block's Jacobian becomes I + df/dx, so",
        "# the gradient reaches the input along the identity.",
        *RESIDUAL_CLASS,
    ]
    for parent, blocks in grouped.items():
        lines += _rebuild_container(parent, blocks)
    if singles:
        lines += [
            *paths_list(singles),
            "for path in paths:",
            "    model.set_submodule(path, Residual(model.get_submodule(path)))",
        ]
    for layer in by_hand:
        lines += [
            f"# {', '.join(layer.modules)}: add the skip",
            "# in forward(): x = x + block(x)",
        ]
    return "\n".join(lines)


def _change_activation(stack: DepthStack, layers: Sequence[DepthLayer]) -> str:
    """Swap each saturating activation for ReLU and re-initialise with He init."""
    blocks = swapped_activation_blocks(layers)
    lines = [
        "# ReLU's slope is 1 where a unit is active; He init",
        "# then starts every block with chi = 1 (GELU also works).",
    ]
    head = layers[-1] if layers else None
    if head is not None and saturates(head.activation) and head not in blocks:
        lines.append(f"# {head.name} keeps its {head.activation}: it shapes the output")
    keys = dict.fromkeys(activation_key(layer.activation) or "" for layer in blocks)
    classes = [f"nn.{SATURATING_KEYS[key]}" for key in keys if key in SATURATING_KEYS]
    classes = classes or ["nn.Sigmoid", "nn.Tanh"]
    lines += [
        f"SATURATING = ({', '.join(classes)},)",
        LAYER_TYPES,
        *paths_list(_block_paths(blocks)),
        "for path in paths:",
        "    block = model.get_submodule(path)",
        "    for name, module in list(block.named_modules()):",
        '        full = f"{path}.{name}" if name else path',
        "        if isinstance(module, SATURATING):",
        "            model.set_submodule(full, nn.ReLU())",
        "        elif isinstance(module, LAYERS):",
        f"            {_kaiming('relu')}",
        "            if module.bias is not None:",
        "                nn.init.zeros_(module.bias)",
    ]
    return "\n".join(lines)


def _plain_paths(layers: Sequence[DepthLayer]) -> list[str]:
    return paths_list(_block_paths([layer for layer in layers if not layer.residual]))


def _init_gain(stack: DepthStack, layers: Sequence[DepthLayer]) -> str:
    """kaiming_normal_ with the gain of the activation the blocks have (or switch to)."""
    nonlinearity = he_nonlinearity(stack, layers)
    chi = plain_chi(layers)
    return "\n".join(
        [
            f"# {init_name(nonlinearity)}: weight variance gain^2 / fan_in,",
            f"# so each block starts with chi near 1 (measured: {chi:.3g}).",
            *_plain_paths(layers),
            *_each_weight(_kaiming(nonlinearity)),
        ]
    )


def _orthogonal_stack(stack: DepthStack, layers: Sequence[DepthLayer]) -> str:
    """Orthogonal weights with the activation's gain: every singular value starts equal."""
    nonlinearity = he_nonlinearity(stack, layers)
    return "\n".join(
        [
            "# every singular value of each weight starts at the",
            f"# {nonlinearity} gain, so the stack is closer to isometry.",
            f'gain = nn.init.calculate_gain("{nonlinearity}")',
            *_plain_paths(layers),
            *_each_weight("nn.init.orthogonal_(module.weight, gain=gain)"),
        ]
    )


def _normalization(stack: DepthStack, layers: Sequence[DepthLayer]) -> str:
    """A norm right after each Linear/Conv of the saturated (or dead) blocks."""
    blocks = inactive_blocks(layers)
    where = ["off the flat tails"] if saturated_blocks(layers) else []
    where += ["out of the dead zone"] if dead_blocks(layers) else []
    return "\n".join(
        [
            "# LayerNorm after each Linear (BatchNorm after a Conv),",
            "# just before the activation: pre-activations stay",
            f"# centred, {' and '.join(where)}.",
            "NORMS = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d,",
            "         nn.Conv3d: nn.BatchNorm3d}",
            *paths_list(_block_paths(blocks)),
            "for path in paths:",
            "    block = model.get_submodule(path)",
            "    for name, module in list(block.named_modules()):",
            '        full = f"{path}.{name}" if name else path',
            "        if isinstance(module, nn.Linear):",
            "            norm = nn.LayerNorm(module.out_features)",
            "        elif type(module) in NORMS:",
            "            norm = NORMS[type(module)](module.out_channels)",
            "        else:",
            "            continue",
            "        model.set_submodule(full, nn.Sequential(module, norm))",
        ]
    )


def _scale_branches(stack: DepthStack, layers: Sequence[DepthLayer]) -> str:
    """Scale each branch's last layer by 1/sqrt(depth x chi_B), or zero it (SkipInit)."""
    residual = residual_layers(layers)
    depth = len(residual) or stack.residual_blocks
    _, scale, why = branch_scale(stack, layers)
    lines = [
        f"# {depth} residual blocks: a branch scaled by {why} makes",
        "# the product of sqrt(1 + chi_B) over depth about e^0.5.",
        "# zero_init = True starts each block as the identity",
        "# (SkipInit / Fixup) and lets training grow the branch.",
        f"scale = {scale}",
        "zero_init = False",
    ]
    known = [layer.branch_last for layer in residual if layer.branch_last]
    if known:
        lines += [
            *paths_list(known),
            "with torch.no_grad():",
            "    for path in paths:",
            "        layer = model.get_submodule(path)",
            '        for param in (layer.weight, getattr(layer, "bias", None)):',
            "            if param is None:",
            "                continue",
            "            if zero_init:",
            "                param.zero_()",
            "            else:",
            "                param.mul_(scale)",
        ]
    unknown = [layer.name for layer in residual if not layer.branch_last]
    if unknown:
        more = ", ..." if len(unknown) > 3 else ""
        lines += [
            f"# {', '.join(unknown[:3])}{more}: no last layer found;",
            "# in their forward(), return x + scale * branch(x)",
        ]
    return "\n".join(lines)


def _skip_evidence(stack: DepthStack, layers: Sequence[DepthLayer]) -> str:
    return skip_clause(stack, layers)


def _activation_evidence(stack: DepthStack, layers: Sequence[DepthLayer]) -> str:
    return f"{activation_clause(layers)}: {chi_clause(stack, layers)}"


def _init_evidence(stack: DepthStack, layers: Sequence[DepthLayer]) -> str:
    """The per-block gain; when a vanishing saturating stack switches to ReLU, what He gives."""
    if saturates(dominant_activation(layers)) and stack.status == Status.VANISHING:
        return f"{chi_clause(stack, layers)}; with ReLU in their place, He init gives 1"
    return chi_clause(stack, layers)


def _orthogonal_evidence(stack: DepthStack, layers: Sequence[DepthLayer]) -> str:
    clauses = [chi_clause(stack, layers), spread_clause(stack)]
    return "; ".join(clause for clause in clauses if clause)


def _activity_evidence(stack: DepthStack, layers: Sequence[DepthLayer]) -> str:
    clauses = [saturation_clause(layers), dead_clause(layers)]
    return "; ".join(clause for clause in clauses if clause)


def _residual_evidence(stack: DepthStack, layers: Sequence[DepthLayer]) -> str:
    return residual_clause(layers)


#: Each fix as it applies to a deep stack.
OVER_DEPTH = {
    FixId.CLIP_GRAD_NORM: dataclasses.replace(
        OVER_TIME[FixId.CLIP_GRAD_NORM], snippet=lambda stack, layers: clip_snippet([], 0.0)
    ),
    FixId.RESIDUAL_CONNECTIONS: Advice(
        "Add residual (skip) connections",
        "A skip around each block makes its Jacobian I + df/dx, so the gradient is not left to "
        "the product of the blocks' gains.",
        _skip_blocks,
        _skip_evidence,
    ),
    FixId.CHANGE_ACTIVATION: Advice(
        "Use a non-saturating activation",
        "ReLU (or GELU) has slope 1 where active; with He init each block starts with chi near 1.",
        _change_activation,
        _activation_evidence,
    ),
    FixId.INIT_GAIN: Advice(
        "Fix the initialisation scale",
        "Initialising each weight with the activation's gain (He init for ReLU) starts each "
        "block with chi near 1.",
        _init_gain,
        _init_evidence,
    ),
    FixId.ORTHOGONAL_INIT: Advice(
        "Initialise weights orthogonally",
        "Orthogonal weights start with every singular value equal, closer to dynamical "
        "isometry than Gaussian ones.",
        _orthogonal_stack,
        _orthogonal_evidence,
    ),
    FixId.NORMALIZATION: Advice(
        "Add LayerNorm or BatchNorm",
        "A norm before each activation keeps pre-activations centred and scaled, where the "
        "activation's slope is large.",
        _normalization,
        _activity_evidence,
    ),
    FixId.SCALE_RESIDUAL_BRANCH: Advice(
        "Scale down each residual branch",
        "A branch scaled by 1/sqrt(depth) (or zero at the start) keeps the product of "
        "sqrt(1 + chi_B) over all blocks bounded.",
        _scale_branches,
        _residual_evidence,
    ),
}
