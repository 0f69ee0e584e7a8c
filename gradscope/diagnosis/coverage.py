"""Findings on coverage: a part no view measured is said, never passed over as healthy."""

from __future__ import annotations

from gradscope.report import NOT_MEASURED, Coverage, Evidence, Finding, Severity, Unmeasured, named


def _message(group: Unmeasured, total: int) -> str:
    share = f"{100 * group.parameters / total:.1f}%" if total else "n/a"
    what = named(group.modules)
    if group.parameters:
        what += f" ({group.parameters:,} parameters, {share})"
    if group.recurrent:
        return (
            f"not measured over time: {what}: {group.reason}; the verdict does not cover this "
            "recurrence"
        )
    return f"not measured: {what}: {group.reason}"


def coverage_findings(coverage: Coverage | None) -> list[Finding]:
    """One ``not-measured`` finding per reason a part was left out; an error for a
    recurrence, a warning otherwise."""
    if coverage is None:
        return []
    findings = []
    for group in coverage.not_measured:
        message = _message(group, coverage.parameters)
        findings.append(
            Finding(
                id=NOT_MEASURED,
                kind=NOT_MEASURED,
                severity=Severity.ERROR if group.recurrent else Severity.WARNING,
                where={"modules": group.modules, "parameters": group.parameters},
                message=message + ".",
                evidence=Evidence("coverage", None, message),
            )
        )
    return findings
