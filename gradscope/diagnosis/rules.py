"""Thresholds and predicates over measured blocks and cores: the rules diagnosis and fixes share.

Pure functions of report data, no torch.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from gradscope.report import DepthLayer, DepthStack, RecurrentCore, Status
from gradscope.taxonomy import SATURATING_KEYS, activation_key

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
