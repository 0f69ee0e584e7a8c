"""Thresholds and predicates over measured blocks and cores: the rules diagnosis and fixes share.

Pure functions of report data, no torch.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from gradscope.report import DepthLayer, DepthStack, RecurrentCore, Status
from gradscope.taxonomy import SATURATING_KEYS, activation_key, saturates

#: The stable id of the finding each failing status raises.
ERROR_IDS = {
    Status.VANISHING: "vanishing-gradient",
    Status.EXPLODING: "exploding-gradient",
    Status.NONFINITE: "nonfinite-values",
}
#: sigma_max this many times the spectral radius marks a strongly non-normal Jacobian.
NON_NORMAL_RATIO = 10.0
#: The largest slope of an activation where it caps chi without any saturation.
MAX_SLOPE = {"sigmoid": 0.25, "hardsigmoid": 1 / 6}
#: Share of a block's units saturated (or dead) above which the block is called saturated.
ACTIVITY_LIMIT = 0.1
#: A per-block gain chi outside [1/CHI_TOLERANCE, CHI_TOLERANCE] is far from 1.
CHI_TOLERANCE = 1.25
#: Singular-value spread (largest over RMS) worth naming: far from dynamical isometry.
SPREAD_LIMIT = 10.0


def dominant_activation(layers: Sequence[DepthLayer]) -> str | None:
    """The activation most blocks use, as measured (``"Sigmoid"``); ``None`` for none."""
    names: dict[str | None, str] = {}
    counts: Counter[str | None] = Counter()
    for layer in layers:
        key = activation_key(layer.activation)
        if key is not None:
            names.setdefault(key, layer.activation or "")
            counts[key] += 1
    if not counts:
        return None
    return names[counts.most_common(1)[0][0]]


def plain_chi(layers: Sequence[DepthLayer]) -> float:
    """Geometric mean of chi over the blocks without a skip (NaN when none is measured)."""
    values = [layer.chi for layer in layers if not layer.residual and math.isfinite(layer.chi)]
    if not values:
        return math.nan
    if min(values) <= 0:
        return 0.0
    return math.exp(sum(math.log(value) for value in values) / len(values))


def chi_far_from_one(chi: float) -> bool:
    """Whether a per-block gain is far enough from 1 to be the init scale's doing."""
    if math.isnan(chi):
        return False
    return chi <= 0 or abs(math.log(chi)) > math.log(CHI_TOLERANCE)


def skip_candidates(layers: Sequence[DepthLayer]) -> list[DepthLayer]:
    """Blocks without a skip that keep their shape, so ``x + f(x)`` is defined."""
    return [layer for layer in layers if not layer.residual and _keeps_shape(layer)]


def _keeps_shape(layer: DepthLayer) -> bool:
    if layer.same_shape is not None:
        return layer.same_shape
    return layer.input_size == layer.output_size


def wants_skips(stack: DepthStack, layers: Sequence[DepthLayer]) -> bool:
    """At least half the blocks (and two) can take a skip: enough to carry the gradient."""
    return len(skip_candidates(layers)) >= max(2, stack.blocks / 2)


def saturated_blocks(layers: Sequence[DepthLayer]) -> list[DepthLayer]:
    """Blocks with more than ACTIVITY_LIMIT of their units saturated."""
    return [layer for layer in layers if (layer.saturated or 0.0) > ACTIVITY_LIMIT]


def dead_blocks(layers: Sequence[DepthLayer]) -> list[DepthLayer]:
    """Blocks with more than ACTIVITY_LIMIT of their ReLU units dead on the probe."""
    return [layer for layer in layers if (layer.dead or 0.0) > ACTIVITY_LIMIT]


def inactive_blocks(layers: Sequence[DepthLayer]) -> list[DepthLayer]:
    """Blocks saturated or dead beyond ACTIVITY_LIMIT: the units a norm would bring back."""
    return [
        layer for layer in layers if max(layer.saturated or 0.0, layer.dead or 0.0) > ACTIVITY_LIMIT
    ]


def residual_layers(layers: Sequence[DepthLayer]) -> list[DepthLayer]:
    """The blocks with a skip (Jacobian ``I + B``)."""
    return [layer for layer in layers if layer.residual]


def branch_gain(layers: Sequence[DepthLayer]) -> float:
    """Mean branch gain chi_B over the residual blocks (NaN when none is measured)."""
    values = [
        layer.branch_chi
        for layer in residual_layers(layers)
        if layer.branch_chi is not None and math.isfinite(layer.branch_chi)
    ]
    return sum(values) / len(values) if values else math.nan


def unseen_blocks(layers: Sequence[DepthLayer]) -> list[DepthLayer]:
    """Blocks whose output is not what the next block reads: unseen work sits between."""
    return [layer for layer in layers if not layer.chained]


def mostly_unseen(layers: Sequence[DepthLayer]) -> bool:
    """Whether half the blocks (and two) are followed by work the depth view does not see."""
    return len(unseen_blocks(layers)) >= max(2, len(layers) / 2)


def is_non_normal(core: RecurrentCore) -> bool:
    """Whether the step Jacobian's sigma_max exceeds 1 and NON_NORMAL_RATIO x its radius."""
    rho = core.jacobian.spectral_radius.median
    sigma = core.jacobian.sigma_max.median
    return sigma > 1 and sigma > NON_NORMAL_RATIO * rho


def he_nonlinearity(stack: DepthStack, layers: Sequence[DepthLayer]) -> str:
    """The ``nonlinearity`` for kaiming init: ReLU's when a vanishing saturating stack switches."""
    activation = dominant_activation(layers)
    key = activation_key(activation)
    if key is None:  # none seen: a functional F.relu between blocks is the usual reason
        return "relu" if mostly_unseen(layers) else "linear"
    if key in SATURATING_KEYS:
        if stack.status == "vanishing":
            return "relu"
        return "sigmoid" if "sigmoid" in key else "tanh"
    return "leaky_relu" if key in ("leakyrelu", "prelu", "rrelu") else "relu"


def _consecutive(layer: DepthLayer) -> bool:
    indices = sorted(layer.indices)
    return bool(indices) and indices == list(range(indices[0], indices[0] + len(indices)))


@dataclass
class SkipPlan:
    """Where ``x + f(x)`` goes around each shape-keeping block without a skip.

    ``grouped``: blocks of a container's consecutive children, by container, regrouped by
    rebuilding it; ``singles``: blocks that are one module, wrapped in place by path;
    ``by_hand``: blocks of several modules elsewhere, whose skip belongs in ``forward()``.
    """

    grouped: dict[str, list[DepthLayer]]
    singles: list[str]
    by_hand: list[DepthLayer]


def skip_plan(layers: Sequence[DepthLayer]) -> SkipPlan:
    """How to put a skip around every block of :func:`skip_candidates`."""
    grouped: dict[str, list[DepthLayer]] = {}
    singles, by_hand = [], []
    candidates = skip_candidates(layers)
    for layer in candidates:
        if len(layer.modules) > 1 and layer.parent is not None and _consecutive(layer):
            grouped.setdefault(layer.parent, []).append(layer)
    for layer in candidates:
        if len(layer.modules) > 1:
            if layer.parent not in grouped or not _consecutive(layer):
                by_hand.append(layer)
        elif layer.parent in grouped and layer.indices:  # renumbered with its container
            grouped[layer.parent].append(layer)
        else:
            singles.append(layer.modules[0])
    return SkipPlan(grouped, singles, by_hand)


def swapped_activation_blocks(layers: Sequence[DepthLayer]) -> list[DepthLayer]:
    """The blocks whose saturating activation becomes ReLU; a last block that changes the
    size keeps its own, since it shapes the output."""
    blocks = [layer for layer in layers if saturates(layer.activation)]
    head = layers[-1] if layers else None
    if head is not None and head in blocks and head.input_size != head.output_size:
        blocks.remove(head)
    return blocks


def branch_scale(stack: DepthStack, layers: Sequence[DepthLayer]) -> tuple[float, str, str]:
    """The factor each residual branch is scaled by: 1/sqrt(depth x chi_B), or 1/sqrt(depth)
    when chi_B is near 1 or unknown; with the expression and its reading in words."""
    depth = len(residual_layers(layers)) or stack.residual_blocks
    gain = branch_gain(layers)
    if math.isnan(gain) or gain <= 0 or abs(gain - 1) < 0.1:
        return 1 / math.sqrt(depth), f"1 / {depth} ** 0.5", f"1/sqrt({depth})"
    written = float(f"{gain:.3g}")  # the value the snippet writes
    return (
        1 / math.sqrt(depth * written),
        f"1 / ({depth} * {gain:.3g}) ** 0.5",
        f"1/sqrt({depth} x chi_B {gain:.3g})",
    )


def plain_cell_call(core: RecurrentCore) -> bool:
    """Whether a custom cell is called as ``cell(x, state) -> state``."""
    state = core.state
    return state is None or (
        state.argument == "argument 1"
        and state.output == "output"
        and [part.split(" (")[0] for part in state.held] == ["argument 0"]
    )
