"""The terminal report: header, table of cores, gradient charts, verdict and fixes (rich)."""

from __future__ import annotations

import math

from rich import box
from rich.console import Console, Group
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from gradscope.render.chart import log_chart
from gradscope.report import RecurrentCore, Report

STATUS_STYLE = {
    "healthy": "bold green",
    "vanishing": "bold yellow",
    "exploding": "bold red",
    "nonfinite": "bold magenta",
}
SHORT_DIRECTION = {"forward": "fwd", "reverse": "rev"}
#: At most this many gradient charts; the rest of the cores are in the table only.
MAX_CHARTS = 8


def number(value: float | None, fmt: str = "{:.3g}") -> str:
    """A number for a table cell; None and non-finite values read as such."""
    if value is None:
        return "∞"
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "-inf" if value < 0 else "inf"
    return fmt.format(value)


def status_text(status: str) -> Text:
    """A status word in its colour."""
    return Text(status, style=STATUS_STYLE.get(status, ""))


def header(report: Report) -> Text:
    """Two lines: what was analysed, and with which probe."""
    model, settings = report.model, report.settings
    source = model.get("path") or "model object"
    text = Text()
    text.append(f"gradscope {report.gradscope_version}", style="bold")
    text.append(
        f"  {source} · {model.get('format')} · "
        f"{model.get('class') or 'architecture inferred from weights'} · "
        f"{model.get('parameters', 0):,} parameters\n"
    )
    text.append(
        f"probe {settings['probe']}: {settings['steps']} steps × batch {settings['batch']}, "
        f"seed {settings['seed']}, {settings['dtype']} on {settings['device']} · horizon "
        f"{settings['horizon']} steps · epsilon {settings['epsilon']:g} · burn-in "
        f"{settings['burn_in']}",
        style="dim",
    )
    return text


def cores_table(cores: list[RecurrentCore]) -> Table:
    """One row per (layer, direction) of every recurrent module; fits 80 columns."""
    table = Table(
        title="Recurrent cores (λ1 in nats per step, horizon in steps)",
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
    table.add_column("core", overflow="fold", ratio=1)
    table.add_column("cell", no_wrap=True, min_width=4)
    for column in ("λ1", "horizon", "ρ(J) med", "σ(J) max"):
        table.add_column(column, justify="right", no_wrap=True, min_width=len(column))
    table.add_column("status", no_wrap=True, min_width=9)
    for core in cores:
        where = "cell" if core.is_cell else f"l{core.layer} {SHORT_DIRECTION[core.direction]}"
        table.add_row(
            Text(f"{core.name or '(model)'} {where}"),
            core.cell,
            number(core.top_exponent, "{:+.3f}"),
            number(core.memory_horizon, "{:.1f}") if core.finite else "n/a",
            number(core.jacobian["spectral_radius"]["median"]),
            number(core.jacobian["sigma_max"]["max"]),
            status_text(core.status),
        )
    return table


def gradient_chart(core: RecurrentCore) -> Panel:
    """||dL/ds|| against lag (steps before the core's last step), log scale."""
    title = Text(f"{core.label}: ‖dL/ds‖ against steps before the last, log scale")
    return Panel(Text(log_chart([core.grad_norm_by_lag])), title=title, title_align="left")


def verdict(report: Report) -> Panel:
    """The overall status and every finding."""
    lines = []
    for finding in report.findings:
        marker = "✖" if finding.severity == "error" else "!"
        line = Text(f"{marker} ", style=STATUS_STYLE.get(finding.kind, ""))
        lines.append(line.append(finding.message, style="default"))
    body = Text("\n").join(lines) or Text("Gradients survive the horizon in every core.")
    title = Text("Verdict: ").append(status_text(report.status.upper()))
    return Panel(body, title=title, title_align="left")


def fix_panels(report: Report) -> list[Panel]:
    """One panel per fix: why and what, then the snippet."""
    panels = []
    for fix in report.fixes:
        snippet = Syntax(fix.snippet, "python", theme="ansi_dark", background_color="default")
        panels.append(
            Panel(
                Group(Text(fix.detail + "\n"), snippet),
                title=f"fix {fix.id}: {fix.title}",
                title_align="left",
            )
        )
    return panels


def write(report: Report, console: Console) -> None:
    """Print the whole terminal report."""
    console.print(header(report))
    console.print()
    if report.recurrent:
        console.print(cores_table(report.recurrent))
    for core in report.recurrent[:MAX_CHARTS]:
        console.print(gradient_chart(core))
    if len(report.recurrent) > MAX_CHARTS:
        console.print(f"(charts for the first {MAX_CHARTS} cores; the JSON has every one)")
    console.print(verdict(report))
    for panel in fix_panels(report):
        console.print(panel)
    for part in report.model.get("not_analysed", []):
        console.print(f"not analysed: {part}", style="dim")
    for note in report.model.get("notes", []):
        console.print(f"note: {note}", style="dim")
