"""``gradscope compare`` written out: a table per part with a column per input, the change
from the first input to the last, and a chart of the reach across them; or JSON, or
markdown. Reads a :class:`~gradscope.compare.Comparison` only."""

from __future__ import annotations

import json
import math

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from gradscope.compare import Comparison, PartSeries
from gradscope.render.chart import log_chart
from gradscope.render.text import STATUS_STYLE, number

#: How each metric reads in a table row.
METRIC_WORDS = {
    "lambda_1": "λ1",
    "memory_horizon": "horizon",
    "decades": "decades",
    "blocks": "blocks",
    "grad_norm_at_lag_0": "‖dL/dx‖ at lag 0",
    "effective_horizon": "reach",
}


def _value(value: float | None, present: bool, metric: str) -> str:
    if not present:
        return "-"
    if value is None:
        return "∞" if metric in ("memory_horizon", "effective_horizon") else "n/a"
    return number(value, "{:+.3f}" if metric == "lambda_1" else "{:.3g}")


def _change(series: list[float | None], present: list[bool]) -> str:
    """From the first input to the last, where the part is in both."""
    if not (present[0] and present[-1]):
        return ""
    first, last = series[0], series[-1]
    if first is None or last is None or not (math.isfinite(first) and math.isfinite(last)):
        return ""
    return f"{last - first:+.3g}"


def part_table(part: PartSeries, inputs: list[str]) -> Table:
    """One part: its rate, reach and status at each input, and the change first -> last."""
    table = Table(title=f"{part.name} ({part.kind})", title_justify="left")
    table.add_column("")
    for name in inputs:
        table.add_column(name, justify="right", overflow="fold")
    table.add_column("change", justify="right")
    present = part.present
    for metric, series in ((part.rate_metric, part.rates), (part.reach_metric, part.reaches)):
        cells = [_value(v, p, metric) for v, p in zip(series, present, strict=True)]
        table.add_row(METRIC_WORDS.get(metric, metric), *cells, _change(series, present))
    statuses = [
        Text(status or "-", style=STATUS_STYLE.get(status or "", "")) for status in part.statuses
    ]
    table.add_row("status", *statuses, "")
    return table


def reach_chart(part: PartSeries, inputs: list[str]) -> Panel | None:
    """The reach across the inputs, log scale; None for fewer than two finite values."""
    values = [v if v is not None and math.isfinite(v) else 0.0 for v in part.reaches]
    if len([v for v in values if v > 0]) < 2:
        return None
    repeat = max(1, 40 // len(values))
    stretched = [v for v in values for _ in range(repeat)]
    chart = log_chart([stretched], height=6, x_ends=(inputs[0], inputs[-1]))
    word = METRIC_WORDS.get(part.reach_metric, part.reach_metric)
    return Panel(Text(chart), title=f"{part.name}: {word} across the inputs", title_align="left")


class ComparisonRenderer:
    """A comparison as text, JSON or markdown."""

    def __init__(self, output_format: str = "text") -> None:
        self.output_format = output_format

    def write(self, comparison: Comparison, console: Console) -> None:
        """Write ``comparison`` in the renderer's format."""
        if self.output_format == "json":
            console.file.write(json.dumps(comparison.to_dict(), indent=2, allow_nan=False) + "\n")
            console.file.flush()
            return
        if self.output_format == "markdown":
            console.file.write(_markdown(comparison) + "\n")
            console.file.flush()
            return
        console.print(Text(f"gradscope compare: {len(comparison.inputs)} inputs", style="bold"))
        for part in comparison.parts:
            chart = reach_chart(part, comparison.inputs)
            console.print(Group(part_table(part, comparison.inputs), *([chart] if chart else [])))
        for note in comparison.notes:
            console.print(f"note: {note}", style="dim")


def _markdown(comparison: Comparison) -> str:
    lines = [f"### gradscope compare: {len(comparison.inputs)} inputs"]
    for part in comparison.parts:
        present = part.present
        lines += ["", f"#### {part.name} ({part.kind})", ""]
        lines.append("| | " + " | ".join(comparison.inputs) + " | change |")
        lines.append("| --- " * (len(comparison.inputs) + 2) + "|")
        for metric, series in ((part.rate_metric, part.rates), (part.reach_metric, part.reaches)):
            cells = [_value(v, p, metric) for v, p in zip(series, present, strict=True)]
            word = METRIC_WORDS.get(metric, metric)
            lines.append(f"| {word} | " + " | ".join(cells) + f" | {_change(series, present)} |")
        lines.append("| status | " + " | ".join(s or "-" for s in part.statuses) + " | |")
    lines += [f"- {note}" for note in comparison.notes]
    return "\n".join(lines)
