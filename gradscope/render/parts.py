"""The parts of a report as one row each (every core, the stack, the sequence view), with the
findings about each: what summary tables and test reports list. Reads the report only."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from gradscope.report import REGRESSION, Finding, RecurrentCore, Report


@dataclass(frozen=True)
class Part:
    """One judged part: its name, its kind, its rate and reach in words, its status, and the
    findings about it."""

    name: str
    kind: str
    rate: str
    reach: str
    status: str
    findings: list[Finding] = field(default_factory=list)


def _number(value: float | None, fmt: str) -> str:
    if value is None:
        return "∞"
    if not math.isfinite(value):
        return "n/a" if math.isnan(value) else ("-inf" if value < 0 else "inf")
    return fmt.format(value)


def _about_core(finding: Finding, core: RecurrentCore) -> bool:
    where = finding.where
    return (where.get("module"), where.get("layer"), where.get("direction")) == (
        core.name,
        core.layer,
        core.direction,
    )


def worse_than_baseline(findings: list[Finding]) -> bool:
    """Whether a regression against the baseline, not ignored, is among ``findings``."""
    return any(f.kind == REGRESSION and not f.ignored for f in findings)


def _status(status: str, findings: list[Finding]) -> str:
    """A part's status, ``regression`` where it is healthy but worse than its baseline."""
    return REGRESSION if status == "healthy" and worse_than_baseline(findings) else status


def parts(report: Report) -> list[Part]:
    """Every core, then the stack, then the sequence view, with their findings; a healthy
    part worse than its baseline has the status ``regression``."""
    found = []
    for core in report.recurrent:
        found.append(
            Part(
                core.label,
                core.cell,
                f"λ1 {_number(core.top_exponent, '{:+.3f}')}",
                f"horizon {_number(core.memory_horizon, '{:.1f}')} of {core.distance}",
                core.status,
                [f for f in report.findings if _about_core(f, core)],
            )
        )
    stack = report.stack
    if stack is not None:
        found.append(
            Part(
                "depth",
                f"{stack.blocks} blocks",
                f"{_number(stack.decades, '{:+.1f}')} decades",
                f"{stack.blocks} blocks",
                stack.status,
                [f for f in report.findings if f.where.get("stack") == "depth"],
            )
        )
    sequence = report.sequence
    if sequence is not None:
        reach = sequence.effective_horizon
        found.append(
            Part(
                "sequence",
                f"loss at {sequence.loss_at}",
                f"reach {len(sequence.grad_norm_by_lag) if reach is None else reach} lags",
                f"of {sequence.distance}",
                sequence.status,
                [f for f in report.findings if f.where.get("view") == "sequence"],
            )
        )
    return [_with_status(part) for part in found]


def _with_status(part: Part) -> Part:
    return dataclasses.replace(part, status=_status(part.status, part.findings))


def other_findings(report: Report) -> list[Finding]:
    """The findings about no single part: what was not measured."""
    listed = {id(f) for part in parts(report) for f in part.findings}
    return [f for f in report.findings if id(f) not in listed]
