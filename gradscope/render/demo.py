"""``gradscope demo`` output: the course's models side by side, and the telling charts.

Recurrent models and deep stacks (models without recurrent cores) get a table and a chart each.
"""

from __future__ import annotations

import json

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from gradscope import __version__
from gradscope.render.chart import MARKS, log_chart
from gradscope.render.text import number, probe_line, status_text
from gradscope.report import SCHEMA_VERSION, Report

#: The pair charted together: a vanilla RNN against an LSTM whose forget gate keeps more.
CHARTED = ("rnn", "lstm-forget-1")

READING = (
    "λ1 is the top Lyapunov exponent of the state Jacobians along the probe (nats per step); "
    "the memory horizon ln(1/epsilon)/|λ1| is the lag over which the gradient changes by "
    "1/epsilon. Gated cells start with their gates half open: training must first learn to "
    "keep information, which a forget/update-gate bias shortens; a vanilla RNN forgets "
    "structurally."
)


DEPTH_READING = (
    "Gradients at each block's output, from the input side (block 1) to the output; the change "
    "in decades is the input side's gradient against the output side's. Saturating sigmoids "
    "pass at most a quarter of the gradient per block, ReLU with He init about all of it, and "
    "an unscaled residual branch adds its gain to the identity in every block."
)


#: Below this console width the tables name each model only, and a legend below says what
#: it is: a description column would wrap mid-phrase at 80 columns.
DESCRIBED_FROM_WIDTH = 110


def _legend(results: list) -> Text:
    """What each model is, one per line, for a table too narrow to say it."""
    width = max(len(demo.name) for demo, _ in results)
    lines = [f"{demo.name:<{width}}  {demo.description}" for demo, _ in results]
    return Text("\n".join(lines), style="dim")


def _table(results: list, described: bool) -> Table:
    table = Table(title="gradscope demo: the course's recurrent models", title_justify="left")
    table.add_column("model", no_wrap=True)
    if described:
        table.add_column("what")
    for column in ("cores", "λ1/step", "horizon"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    for demo, report in results:
        core = report.deciding_core()
        table.add_row(
            demo.name,
            *([demo.description] if described else []),
            str(len(report.recurrent)),
            number(core.top_exponent, "{:+.3f}"),
            number(core.memory_horizon, "{:.1f}"),
            status_text(report.status),
        )
    return table


def _chart(results: list) -> Panel:
    chosen = [(demo, report) for demo, report in results if demo.name in CHARTED]
    series = [report.deciding_core().grad_norm_by_lag for _, report in chosen]
    legend = "   ".join(
        f"{mark} {demo.name}" for mark, (demo, _) in zip(MARKS, chosen, strict=False)
    )
    title = "‖dL/ds‖ against steps before the last, log scale"
    return Panel(Text(log_chart(series) + "\n" + legend), title=title, title_align="left")


def _depth_table(results: list, described: bool) -> Table:
    table = Table(
        title="gradscope demo: deep feed-forward and residual stacks", title_justify="left"
    )
    table.add_column("model", no_wrap=True)
    if described:
        table.add_column("what")
    for column in ("blocks", "decades", "per block", "spread"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    for demo, report in results:
        depth = report.stack
        table.add_row(
            demo.name,
            *([demo.description] if described else []),
            str(depth.blocks),
            number(depth.decades, "{:+.1f}"),
            number(depth.gain_per_block, "{:.3f}"),
            "n/a" if depth.spread is None else number(depth.spread),
            status_text(report.status),
        )
    return table


def _depth_chart(results: list) -> Panel:
    chosen = results[: len(MARKS)]
    series = [[layer.grad_norm for layer in report.layers] for _, report in chosen]
    legend = "   ".join(
        f"{mark} {demo.name}" for mark, (demo, _) in zip(MARKS, chosen, strict=False)
    )
    blocks = max(len(values) for values in series)
    ends = ("block 1 (input side)", f"block {blocks} (output side)")
    title = "‖dL/da‖ against depth, log scale"
    chart = log_chart(series, height=12, x_ends=ends)
    return Panel(Text(chart + "\n" + legend), title=title, title_align="left")


def write_demo(results: list[tuple[object, Report]], output_format: str, console: Console) -> None:
    """Write the comparison as a table and chart (text) or as a list of reports (json)."""
    if output_format == "json":
        data = {
            "schema_version": SCHEMA_VERSION,
            "gradscope_version": __version__,
            "demo": [
                {"name": demo.name, "description": demo.description, "report": report.to_dict()}
                for demo, report in results
            ],
        }
        console.file.write(json.dumps(data, indent=2, allow_nan=False) + "\n")
        return
    described = console.width >= DESCRIBED_FROM_WIDTH
    recurrent = [(demo, report) for demo, report in results if report.recurrent]
    deep = [(demo, report) for demo, report in results if not report.recurrent and report.layers]
    if recurrent:
        first = recurrent[0][1].settings
        console.print(
            f"probe {first.probe}: {first.steps} steps, seed {first.seed}, "
            f"{first.dtype} · horizon {first.distance} · epsilon {first.epsilon:g}",
            style="dim",
        )
        console.print(_table(recurrent, described))
        if not described:
            console.print(_legend(recurrent))
        console.print(_chart(recurrent))
        console.print(Text(READING, style="dim"))
    if deep:
        console.print(probe_line(deep[0][1]), style="dim")
        console.print(_depth_table(deep, described))
        if not described:
            console.print(_legend(deep))
        console.print(_depth_chart(deep))
        console.print(Text(DEPTH_READING, style="dim"))
