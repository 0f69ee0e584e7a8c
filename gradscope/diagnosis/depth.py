"""Findings over depth: what a judged stack's numbers say, and which fixes apply."""

from __future__ import annotations

import math
from collections.abc import Sequence

from gradscope.diagnosis.clauses import (
    activation_clause,
    chi_clause,
    dead_clause,
    residual_clause,
    saturation_clause,
    spread_clause,
    unseen_clause,
)
from gradscope.diagnosis.rules import (
    ERROR_IDS,
    chi_far_from_one,
    dominant_activation,
    inactive_blocks,
    plain_chi,
    residual_layers,
    wants_skips,
)
from gradscope.diagnosis.verdict import first_nonfinite
from gradscope.report import DepthLayer, DepthStack, Evidence, Finding, FixId, Severity, Status
from gradscope.taxonomy import RELU_LIKE, activation_key, saturates


def _depth_where(stack: DepthStack, layers: Sequence[DepthLayer]) -> dict:
    return {
        "stack": "depth",
        "blocks": stack.blocks,
        "first": layers[0].name if layers else None,
        "last": layers[-1].name if layers else None,
    }


def _depth_rate(stack: DepthStack) -> str:
    """``depth (50 blocks): the gradient shrinks 10^30.7 from the output to the input ...``."""
    label = f"depth ({stack.blocks} blocks)"
    if not math.isfinite(stack.decades):
        return f"{label}: no gradient reaches the input side of the stack"
    verb = "shrinks" if stack.decades < 0 else "grows"
    return (
        f"{label}: the gradient {verb} 10^{abs(stack.decades):.1f} from the output to the "
        f"input (x{stack.gain_per_block:.3g} per block)"
    )


def _depth_error(
    stack: DepthStack,
    layers: Sequence[DepthLayer],
    clauses: list[str | None],
    fixes: list[FixId],
) -> Finding:
    """The finding behind a judged stack's failing status; ``None`` clauses are left out.

    The first clause, the rate, is the evidence a fix quotes.
    """
    present = [clause for clause in clauses if clause]
    kind = Status(stack.status)
    return Finding(
        id=ERROR_IDS[kind],
        kind=kind,
        severity=Severity.ERROR,
        where=_depth_where(stack, layers),
        message="; ".join(present) + ".",
        fixes=fixes,
        evidence=Evidence("stack", None, present[0]),
    )


def _depth_vanishing_fixes(stack: DepthStack, layers: Sequence[DepthLayer]) -> list[FixId]:
    """Skips where blocks keep their shape; then the activation, the init, normalisation."""
    fixes = [FixId.RESIDUAL_CONNECTIONS] if wants_skips(stack, layers) else []
    activation = dominant_activation(layers)
    if saturates(activation):
        fixes += [FixId.CHANGE_ACTIVATION, FixId.INIT_GAIN]
    elif chi_far_from_one(plain_chi(layers)):
        fixes.append(FixId.INIT_GAIN)
        if activation_key(activation) in (None, *RELU_LIKE):
            fixes.append(FixId.ORTHOGONAL_INIT)
    if inactive_blocks(layers):
        fixes.append(FixId.NORMALIZATION)
    return fixes


def _depth_vanishing(stack: DepthStack, layers: Sequence[DepthLayer]) -> Finding:
    clauses = [_depth_rate(stack)]
    if saturates(dominant_activation(layers)):
        clauses.append(f"{activation_clause(layers)}: {chi_clause(stack, layers)}")
    elif chi_far_from_one(plain_chi(layers)):
        clauses.append(chi_clause(stack, layers))
    clauses += [
        saturation_clause(layers),
        dead_clause(layers),
        unseen_clause(layers),
        spread_clause(stack),
    ]
    return _depth_error(stack, layers, clauses, _depth_vanishing_fixes(stack, layers))


def _depth_exploding(stack: DepthStack, layers: Sequence[DepthLayer]) -> Finding:
    """Residual stacks: scale the branches; plain ones: the init; clipping for both."""
    clauses = [_depth_rate(stack)]
    if stack.residual_blocks > 0:
        fixes = [FixId.SCALE_RESIDUAL_BRANCH, FixId.CLIP_GRAD_NORM]
        if residual_layers(layers):
            clauses.append(residual_clause(layers))
    else:
        fixes = [FixId.INIT_GAIN, FixId.ORTHOGONAL_INIT, FixId.CLIP_GRAD_NORM]
        if not math.isnan(plain_chi(layers)):
            clauses.append(chi_clause(stack, layers))
    clauses += [spread_clause(stack), "updates will blow up without clipping"]
    return _depth_error(stack, layers, clauses, fixes)


def _depth_nonfinite(stack: DepthStack, layers: Sequence[DepthLayer]) -> Finding:
    where = first_nonfinite(stack, layers)
    clauses = [
        f"depth ({stack.blocks} blocks): NaN or Inf in the gradients or block gains on the "
        f"probe, first at {where}",
        "check the weights (and a --probe file) for NaN or Inf, then clip gradients in training",
    ]
    return _depth_error(stack, layers, clauses, [FixId.CLIP_GRAD_NORM])


def depth_findings(stack: DepthStack, layers: Sequence[DepthLayer]) -> list[Finding]:
    """The finding behind an assessed stack's failing status (none when healthy)."""
    if stack.status == Status.NONFINITE:
        return [_depth_nonfinite(stack, layers)]
    if stack.status == Status.VANISHING:
        return [_depth_vanishing(stack, layers)]
    if stack.status == Status.EXPLODING:
        return [_depth_exploding(stack, layers)]
    return []
