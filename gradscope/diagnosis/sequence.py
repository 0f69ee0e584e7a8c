"""The sequence view judged: how many lags the input gradient keeps, and the verdict over the
horizon, as for a core. Pure, no torch."""

from __future__ import annotations

import dataclasses
import math

from gradscope.diagnosis.rules import ERROR_IDS
from gradscope.report import Evidence, Finding, FixId, SequenceGradient, Severity, Status


def effective_horizon(by_lag: list[float], epsilon: float) -> int | None:
    """The number of lags up to the last one whose gradient is at least ``epsilon`` times the
    peak; None when that is every lag measured (the gradient reaches beyond the probe), or
    when NaN or Inf leave it unknown."""
    if not all(math.isfinite(norm) for norm in by_lag):
        return None
    peak = max(by_lag, default=0.0)
    if peak <= 0:
        return 0
    reached = max(lag for lag, norm in enumerate(by_lag) if norm >= epsilon * peak) + 1
    return None if reached == len(by_lag) else reached


def sequence_status(view: SequenceGradient, epsilon: float, distance: int) -> Status:
    """``exploding`` when the gradient grows by more than 1/epsilon from the loss's step back
    within ``distance`` lags, ``vanishing`` when it falls below epsilon times its peak for good
    within them, ``nonfinite`` on NaN or Inf, else ``healthy``."""
    norms = view.grad_norm_by_lag
    if not all(math.isfinite(norm) for norm in norms):
        return Status.NONFINITE
    within = norms[:distance]
    first = next((norm for norm in within if norm > 0), 0.0)
    if first > 0 and max(within) / first > 1 / epsilon:
        return Status.EXPLODING
    horizon = effective_horizon(norms, epsilon)
    if horizon is not None and horizon < min(distance, len(norms) + 1):
        return Status.VANISHING
    return Status.HEALTHY


def assess_sequence(
    view: SequenceGradient, epsilon: float, requested: int | None
) -> SequenceGradient:
    """The view judged over ``--horizon`` (by default every lag it measured)."""
    distance = requested or len(view.grad_norm_by_lag)
    return dataclasses.replace(
        view,
        effective_horizon=effective_horizon(view.grad_norm_by_lag, epsilon),
        distance=distance,
        status=sequence_status(view, epsilon, distance),
    )


def _where(view: SequenceGradient) -> str:
    if view.loss_at == "all":
        return "a loss at every step"
    if view.loss_at == "last":
        return "a loss at the last step"
    return f"a loss at step {view.loss_at}"


def sequence_findings(
    view: SequenceGradient | None, epsilon: float, cores_vanish: bool, has_cores: bool = False
) -> list[Finding]:
    """A finding when the input gradient does not reach across the horizon, with fixes for
    the kind of model: a recurrent core's own findings carry its fixes; a model that mixes
    time otherwise (convolutions, attention, scans) gets a wider reach; healthy cores beside a
    sequence view that does not reach point at what their step maps hold."""
    if view is None or view.status == Status.HEALTHY:
        return []
    status = Status(view.status)
    where = _where(view)
    if status == Status.NONFINITE:
        reason = f"sequence view: NaN or Inf in the input gradient of {where}"
        fixes = [FixId.CLIP_GRAD_NORM]
    elif status == Status.EXPLODING:
        reason = (
            f"sequence view: the input gradient of {where} grows by more than "
            f"{1 / epsilon:g}x going back within the {view.distance}-step horizon"
        )
        fixes = [FixId.CLIP_GRAD_NORM]
    else:
        reason = (
            f"sequence view: the input gradient of {where} reaches back "
            f"{view.effective_horizon} step(s), short of the {view.distance}-step horizon"
        )
        fixes = [] if has_cores else [FixId.RECEPTIVE_FIELD]
    if status != Status.VANISHING:
        advice = "clip gradients in training"
    elif cores_vanish:
        advice = "the recurrent cores' findings say why and what to change"
    elif has_cores:
        advice = (
            "the recurrent cores are healthy over their own step maps, so the loss loses the "
            "input elsewhere: a part of the loop their step maps hold (see the notes), a "
            "recurrence no core follows, or a short window before them"
        )
    else:
        advice = "inputs further back than that cannot be learnt from at this checkpoint"
    return [
        Finding(
            id=ERROR_IDS[status],
            kind=status,
            severity=Severity.ERROR,
            where={"view": "sequence", "loss_at": view.loss_at},
            message=f"{reason}; {advice}.",
            fixes=fixes,
            evidence=Evidence("sequence", None, reason),
        )
    ]
