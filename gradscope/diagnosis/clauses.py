"""The measurements in words: clauses that findings and fixes quote. Pure, no torch."""

from __future__ import annotations

import math
from collections.abc import Sequence

from gradscope.diagnosis.rules import (
    MAX_SLOPE,
    SPREAD_LIMIT,
    branch_gain,
    dead_blocks,
    dominant_activation,
    he_nonlinearity,
    mostly_unseen,
    plain_chi,
    residual_layers,
    saturated_blocks,
    skip_candidates,
    unseen_blocks,
)
from gradscope.report import DepthLayer, DepthStack
from gradscope.taxonomy import activation_key, saturates


def init_name(nonlinearity: str) -> str:
    return {"relu": "He init", "leaky_relu": "He init", "linear": "LeCun init"}.get(
        nonlinearity, f"kaiming init with the {nonlinearity} gain"
    )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def activation_clause(layers: Sequence[DepthLayer]) -> str:
    """``50 of 50 blocks use Sigmoid, whose slope is at most 0.25``."""
    activation = dominant_activation(layers)
    key = activation_key(activation)
    count = sum(activation_key(layer.activation) == key for layer in layers)
    slope = MAX_SLOPE.get(key or "")
    why = (
        f"whose slope is at most {slope:.3g}"
        if slope is not None
        else "whose slope falls towards 0 away from the origin"
    )
    return f"{count} of {len(layers)} blocks use {activation}, {why}"


def chi_clause(stack: DepthStack, layers: Sequence[DepthLayer]) -> str:
    """``per-block gain chi = 0.667 (geometric mean) with ReLU units: ...``."""
    chi = plain_chi(layers)
    text = f"per-block gain chi = {chi:.3g} (geometric mean)"
    activation = dominant_activation(layers)
    if saturates(activation):
        return text
    units = f"with {activation} units" if activation else "with no activation"
    init = init_name(he_nonlinearity(stack, layers))
    return f"{text} {units}: the init scale sets it, and {init} gives 1"


def unseen_clause(layers: Sequence[DepthLayer]) -> str | None:
    """``12 of 30 blocks are followed by work the depth view does not see (...)``."""
    if not mostly_unseen(layers):
        return None
    unseen = unseen_blocks(layers)
    return (
        f"{len(unseen)} of {len(layers)} blocks are followed by work the depth view does not "
        "see (a functional activation such as F.relu, or a skip in forward()): their chi "
        "covers the modules only, their gain all of it"
    )


def _activity_clause(
    layers: Sequence[DepthLayer], flagged: list[DepthLayer], field: str, what: str, default: str
) -> str | None:
    """``N of M blocks <what> their <activation> units (mean P%)``; None when none is flagged."""
    if not flagged:
        return None
    measured = [getattr(layer, field) for layer in layers if getattr(layer, field) is not None]
    names = dict.fromkeys(layer.activation for layer in flagged if layer.activation)
    units = "/".join(name for name in names if name) or default
    return (
        f"{len(flagged)} of {len(layers)} blocks {what} {units} units (mean {_mean(measured):.0%})"
    )


def saturation_clause(layers: Sequence[DepthLayer]) -> str | None:
    """``48 of 50 blocks saturate their Sigmoid units (mean 31%)``; None when few do."""
    return _activity_clause(
        layers, saturated_blocks(layers), "saturated", "saturate their", "saturating"
    )


def dead_clause(layers: Sequence[DepthLayer]) -> str | None:
    """``12 of 50 blocks have dead ReLU units (mean 40%)``; None when few do."""
    return _activity_clause(layers, dead_blocks(layers), "dead", "have dead", "ReLU")


def spread_clause(stack: DepthStack) -> str | None:
    """The end-to-end Jacobian's spread when it is far from isometry."""
    spread = stack.spread
    if spread is None or not math.isfinite(spread) or spread <= SPREAD_LIMIT:
        return None
    return f"the input-output Jacobian's singular values spread x{spread:.3g} (largest over RMS)"


def residual_clause(layers: Sequence[DepthLayer]) -> str:
    """``50 residual blocks with branch gain chi_B = 1 (mean) each grow it by ...``."""
    residual = residual_layers(layers)
    gain = branch_gain(layers)
    growth = math.sqrt(1 + gain) if gain >= 0 else math.nan
    return (
        f"{len(residual)} residual blocks with branch gain chi_B = {gain:.3g} (mean) each grow it "
        f"by sqrt(1 + chi_B) = {growth:.3g}: their branches are not scaled down with depth"
    )


def skip_clause(stack: DepthStack, layers: Sequence[DepthLayer]) -> str:
    """``48 of 50 blocks keep their shape (512 -> 512) and have no skip``."""
    candidates = skip_candidates(layers)
    sizes = dict.fromkeys(layer.output_size for layer in candidates)
    shown = ", ".join(f"{size} -> {size}" for size in list(sizes)[:3])
    more = ", ..." if len(sizes) > 3 else ""
    return (
        f"{len(candidates)} of {stack.blocks} blocks keep their shape ({shown}{more}) "
        "and have no skip"
    )
