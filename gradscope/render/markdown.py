"""``--format markdown``: a summary table and the fixes with their snippets, for a pull
request comment or a CI job summary."""

from __future__ import annotations

from rich.console import Console

from gradscope.render import Checked
from gradscope.render.numerics import (
    HEADROOM_COLUMNS,
    headroom_rows,
    largest_line,
    underflow_summary,
)
from gradscope.render.parts import Part, other_findings, parts, worse_than_baseline
from gradscope.report import DEFAULT_FAIL_ON, Finding, Report


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell (or a heading): no pipes, line breaks or tags."""
    return text.replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(_cell(cell) for cell in cells) + " |"


def _status(status: str) -> str:
    return f"**{status}**" if status != "healthy" else status


def _finding(finding: Finding) -> str:
    tag = "ignored" if finding.ignored else finding.severity
    return f"- {tag} `{finding.id}`: {finding.message}"


def _table(rows: list[tuple[str, Part | None, str]]) -> list[str]:
    lines = [_row(["model", "part", "kind", "rate", "reach", "status"])]
    lines.append("| --- | --- | --- | --- | --- | --- |")
    for name, part, status in rows:
        if part is None:
            lines.append(_row([name, "", "", "", "", _status(status)]))
        else:
            lines.append(
                _row([name, part.name, part.kind, part.rate, part.reach, _status(part.status)])
            )
    return lines


def _rows(name: str, report: Report) -> list[tuple[str, Part | None, str]]:
    found = parts(report)
    if not found:
        return [(name, None, report.status)]
    return [(name if i == 0 else "", part, part.status) for i, part in enumerate(found)]


def _number(value: float | None) -> str:
    return "∞" if value is None else f"{value:.3g}"


def _baseline(report: Report) -> list[str]:
    """Every number against the baseline, before and after."""
    comparison = report.baseline
    if comparison is None:
        return []
    lines = ["", f"Against the baseline `{comparison.path}`:", ""]
    lines += [
        _row(["part", "metric", "before", "after", "worse"]),
        "| --- | --- | --- | --- | --- |",
    ]
    for change in comparison.changes:
        metric = change.metric.replace("lambda_1", "λ1").replace("_", " ")
        after, worse = _number(change.after), "**worse**" if change.worse else ""
        lines.append(_row([change.where, metric, _number(change.before), after, worse]))
    return lines


def _headroom(report: Report) -> list[str]:
    """The traced pass's largest values and each dtype's headroom, as a table."""
    numerics = report.numerics
    if numerics is None or not numerics.traced:
        return []
    lines = ["", largest_line(numerics) + ":", "", _row(list(HEADROOM_COLUMNS))]
    lines.append("| --- " * len(HEADROOM_COLUMNS) + "|")
    lines += [_row(row) for row in headroom_rows(numerics)]
    summary = underflow_summary(numerics)
    return [*lines, "", summary] if summary else lines


def _details(report: Report) -> list[str]:
    lines = [_finding(f) for part in parts(report) for f in part.findings]
    lines += [_finding(f) for f in other_findings(report)]
    lines += _baseline(report)
    lines += _headroom(report)
    for fix in report.fixes:
        tried = " (tried: did not help)" if fix.helps is False else ""
        lines += ["", f"#### Fix `{fix.id}`: {fix.title}{tried}", "", fix.detail]
        if fix.effect:
            changes = ", ".join(
                f"{e.where} {e.metric.replace('_', ' ')} {_number(e.before)} → {_number(e.after)}"
                for e in fix.effect
            )
            after = f"; {fix.status_after} after" if fix.status_after else ""
            lines += ["", f"Measured on a copy: {changes}{after} ({fix.measured})."]
        elif fix.measured:
            lines += ["", f"Not measured: {fix.measured}."]
        lines += ["", "```python", fix.snippet, "```"]
    return lines


class MarkdownRenderer:
    """The report as markdown: status, a table of the parts, findings, fixes."""

    def __init__(self, fail_on: tuple[str, ...] = DEFAULT_FAIL_ON) -> None:
        self.fail_on = fail_on

    def write(self, report: Report, console: Console) -> None:
        """Write one model's report."""
        name = report.model.path or report.model.class_name or "model"
        worse = ", worse than the baseline" if worse_than_baseline(report.findings) else ""
        lines = [f"### gradscope: {_status(report.status)}{worse}", ""]
        lines += _table(_rows(name, report))
        details = _details(report)
        lines += ["", *details] if details else []
        self._emit(lines, console)

    def write_checks(self, checked: list[Checked], console: Console) -> None:
        """Write every model ``check`` ran: one table, then the details of what failed."""
        failing = [c for c in checked if c.report is None or c.report.fails(self.fail_on)]
        ignoring = [
            c
            for c in checked
            if c not in failing and c.report and any(f.ignored for f in c.report.findings)
        ]
        lines = [f"### gradscope check: {len(checked) - len(failing)} of {len(checked)} pass", ""]
        rows = []
        for entry in checked:
            if entry.report is None:
                rows.append((entry.name, None, "error"))
            else:
                rows += _rows(entry.name, entry.report)
        lines += _table(rows)
        for entry in failing:
            lines += ["", f"#### {_cell(entry.name)} (`{entry.path}`)", ""]
            lines += [f"- error: {entry.error}"] if entry.report is None else _details(entry.report)
        for entry in ignoring:
            lines += ["", f"#### {_cell(entry.name)} (`{entry.path}`), ignored findings", ""]
            lines += [_finding(f) for f in entry.report.findings if f.ignored]
        self._emit(lines, console)

    @staticmethod
    def _emit(lines: list[str], console: Console) -> None:
        console.file.write("\n".join(lines) + "\n")
        console.file.flush()
