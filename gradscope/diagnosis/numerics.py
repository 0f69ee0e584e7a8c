"""Findings about the numbers themselves: weights that already hold NaN or Inf, where a
non-finite value first appears forward and backward, and gradients that a low-precision
analysis dtype cannot hold."""

from __future__ import annotations

from gradscope.report import (
    Evidence,
    Finding,
    FixId,
    Numerics,
    Origin,
    Severity,
    Status,
    WeightFault,
)

#: The parameters a finding lists by name before it says "and N more".
LISTED = 3
#: The fixes for each cause of a non-finite value, most direct first.
FIXES_BY_CAUSE = {
    "nonfinite-weight": [FixId.RESTORE_WEIGHTS, FixId.LOWER_LEARNING_RATE, FixId.CLIP_GRAD_NORM],
    "nonfinite-input": [FixId.ADD_EPSILON],
    "log-of-non-positive": [FixId.STABLE_FORMULATION, FixId.ADD_EPSILON],
    "sqrt-of-negative": [FixId.STABLE_FORMULATION, FixId.ADD_EPSILON],
    "division-by-zero": [FixId.ADD_EPSILON],
    "power-of-negative": [FixId.STABLE_FORMULATION],
    "overflow": [FixId.CLIP_GRAD_NORM, FixId.LOWER_LEARNING_RATE],
    "infinite-derivative": [FixId.ADD_EPSILON, FixId.STABLE_FORMULATION],
    "follows-forward": [],
    "nan-from-finite": [FixId.STABLE_FORMULATION],
    "unseen": [FixId.CLIP_GRAD_NORM],
}


def describe(origin: Origin) -> str:
    """``the forward first holds NaN at blocks.2 (LogBlock), log at model.py:7, time step 3``."""
    where = f"{origin.op} in {origin.place}"
    if origin.step is not None:
        where += f" at time step {origin.step}"
    elif origin.call and origin.call > 1:
        where += f" (its call {origin.call})"
    line = f"; the line: {origin.source}" if origin.source else ""
    return (
        f"the {origin.direction} pass first holds {origin.value} at {where}: {origin.detail}{line}"
    )


def _fixes(origin: Origin, dtype: str) -> list[str]:
    fixes = list(FIXES_BY_CAUSE.get(origin.cause, []))
    if origin.cause == "overflow" and dtype == "float16":
        fixes.insert(0, FixId.USE_BFLOAT16)  # float32's range at half the bytes
    return [str(fix) for fix in fixes]


def _where(origin: Origin) -> dict:
    return {
        "view": origin.direction,
        "module": origin.module or "(model)",
        "op": origin.op,
        "step": origin.step,
        "cause": origin.cause,
    }


def _weights(numerics: Numerics) -> Finding:
    faults = numerics.nonfinite_weights
    listed = ", ".join(f"{fault.name} ({_held(fault)})" for fault in faults[:LISTED])
    more = f" and {len(faults) - LISTED} more" if len(faults) > LISTED else ""
    several = len(faults) != 1
    reason = (
        f"{len(faults)} parameter{'s' if several else ''} of the checkpoint already "
        f"hold{'' if several else 's'} NaN or Inf: {listed}{more}"
    )
    return Finding(
        id="nonfinite-weights",
        kind=Status.NONFINITE,
        severity=Severity.ERROR,
        where={"view": "weights", "modules": [fault.name for fault in faults]},
        message=reason + "; every output and gradient that reads them is not finite: training "
        "had diverged before this checkpoint was saved",
        fixes=[str(f) for f in FIXES_BY_CAUSE["nonfinite-weight"]],
        evidence=Evidence("numerics", None, reason),
    )


def _held(fault: WeightFault) -> str:
    """``3 NaN, 1 Inf of 4,096``."""
    held = [
        f"{count:,} {what}" for count, what in ((fault.nan, "NaN"), (fault.inf, "Inf")) if count
    ]
    return f"{', '.join(held)} of {fault.numel:,}"


def _origin_finding(origin: Origin, numerics: Numerics, then: Origin | None) -> Finding:
    reason = describe(origin)
    if numerics.dtype != "float64" and origin.cause == "overflow":
        reason += f" (traced in {numerics.dtype})"
    message = reason[0].upper() + reason[1:]
    if then is not None:
        message += f"; backward, the gradient first turns {then.value} at {then.op} in {then.place}"
        message += ", which reads that value" if then.cause == "follows-forward" else ""
    return Finding(
        id="nonfinite-values",
        kind=Status.NONFINITE,
        severity=Severity.ERROR,
        where=_where(origin),
        message=message,
        fixes=_fixes(origin, numerics.dtype),
        evidence=Evidence("numerics", None, reason),
    )


def _low_precision(numerics: Numerics, distance: int | None) -> Finding | None:
    """A warning when the analysis dtype is float16 or bfloat16 and a part's gradient norm
    falls below its smallest normal within the distance judged."""
    row = next((h for h in numerics.headroom if h.dtype == numerics.dtype), None)
    if row is None or numerics.dtype not in ("float16", "bfloat16"):
        return None
    within = [u for u in row.underflow if distance is None or u.lag < distance]
    if not within:
        return None
    first = min(within, key=lambda u: u.lag)
    reason = (
        f"in {row.dtype}, the gradient norm falls below the smallest normal "
        f"({row.smallest_normal:.3g}) in {first.place}"
    )
    fixes = [FixId.LOSS_SCALING, FixId.USE_BFLOAT16] if row.dtype == "float16" else []
    return Finding(
        id="low-precision",
        kind="low-precision",
        severity=Severity.WARNING,
        where={"view": "headroom", "module": first.part, "dtype": row.dtype},
        message=reason + ": every element of it is subnormal there (fewer bits) and, "
        "further on, 0: loss scaling lifts gradients by its scale; bfloat16 keeps float32's "
        "range",
        fixes=[str(f) for f in fixes],
        evidence=Evidence("numerics", None, reason),
    )


def numerics_findings(numerics: Numerics | None, distance: int | None = None) -> list[Finding]:
    """What the numbers say: non-finite weights, the forward origin (with the backward one it
    led to), a backward origin of its own, and a low-precision warning."""
    if numerics is None:
        return []
    findings = []
    if numerics.nonfinite_weights:
        findings.append(_weights(numerics))
    forward, backward = numerics.forward, numerics.backward
    if forward is not None:
        findings.append(_origin_finding(forward, numerics, backward))
    elif backward is not None:
        findings.append(_origin_finding(backward, numerics, None))
    warning = _low_precision(numerics, distance)
    if warning is not None:
        findings.append(warning)
    return findings


def numerics_status(numerics: Numerics | None) -> Status:
    """nonfinite when a weight, the forward or the backward held NaN or Inf."""
    if numerics is None or numerics.finite:
        return Status.HEALTHY
    return Status.NONFINITE
