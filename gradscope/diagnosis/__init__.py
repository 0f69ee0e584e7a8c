"""From numbers to a verdict and findings: pure rules over report data, no torch.

:func:`diagnose` judges every core over its distance and the stack over its depth
(:mod:`~gradscope.diagnosis.verdict`), then words what the numbers say
(:mod:`~gradscope.diagnosis.recurrent`, :mod:`~gradscope.diagnosis.depth`) with the thresholds
and predicates of :mod:`~gradscope.diagnosis.rules`. Fixes are chosen here by id; their advice
lives in :mod:`gradscope.fixes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from gradscope.diagnosis.coverage import coverage_findings
from gradscope.diagnosis.depth import depth_findings
from gradscope.diagnosis.numerics import numerics_findings, numerics_status
from gradscope.diagnosis.recurrent import core_findings
from gradscope.diagnosis.sequence import assess_sequence, sequence_findings
from gradscope.diagnosis.verdict import assess_cores, assess_depth, worst
from gradscope.report import (
    STATUSES,
    Coverage,
    DepthLayer,
    DepthStack,
    Finding,
    Numerics,
    RecurrentCore,
    SequenceGradient,
    Severity,
    Status,
)

__all__ = ["Diagnosis", "diagnose"]


@dataclass
class Diagnosis:
    """The judged cores and stack, the overall status, and the findings, errors first."""

    status: Status
    cores: list[RecurrentCore]
    stack: DepthStack | None
    layers: list[DepthLayer] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    coverage: Coverage | None = None
    sequence: SequenceGradient | None = None
    numerics: Numerics | None = None


def _rank(kind: str) -> int:
    """A status kind's rank; a finding of another kind (not measured) ranks below them."""
    return Status(kind).rank if kind in STATUSES else -1


def by_severity(findings: list[Finding]) -> list[Finding]:
    """Errors first, the worst kind first; otherwise in the order found."""
    return sorted(findings, key=lambda f: (f.severity != Severity.ERROR, -_rank(f.kind)))


def diagnose(
    cores: list[RecurrentCore],
    epsilon: float,
    stack: DepthStack | None = None,
    layers: Sequence[DepthLayer] = (),
    coverage: Coverage | None = None,
    sequence: SequenceGradient | None = None,
    distance: int | None = None,
    numerics: Numerics | None = None,
) -> Diagnosis:
    """Judge each core over its own ``horizon`` and the stack (when measured) over its blocks,
    and say every part ``coverage`` shows was not measured; the ``sequence`` view (when
    measured) over ``distance`` (``--horizon``; by default every lag it measured).

    The overall status is the worst of the measured parts and of the ``numerics`` (a weight,
    forward value or gradient that is NaN or Inf is ``nonfinite``); what was not measured is a
    ``not-measured`` finding (an error for a recurrence), never a healthy part.
    """
    judged = assess_cores(cores, epsilon)
    findings = numerics_findings(numerics, distance)  # the root of any NaN comes first
    findings += core_findings(judged, epsilon)
    statuses = [core.status for core in judged]
    judged_stack = None
    if stack is not None:
        judged_stack = assess_depth(stack, list(layers), epsilon)
        findings += depth_findings(judged_stack, layers)
        statuses.append(judged_stack.status)
    judged_sequence = None
    if sequence is not None:
        judged_sequence = assess_sequence(sequence, epsilon, distance)
        cores_vanish = any(core.status != Status.HEALTHY for core in judged)
        findings += sequence_findings(judged_sequence, epsilon, cores_vanish, bool(judged))
        statuses.append(judged_sequence.status)
    statuses.append(numerics_status(numerics))
    findings += coverage_findings(coverage)
    return Diagnosis(
        worst(statuses),
        judged,
        judged_stack,
        list(layers),
        by_severity(findings),
        coverage,
        judged_sequence,
        numerics,
    )
