"""The terminal report: header, cores and depth stack with their charts, verdict, fixes (rich)."""

from __future__ import annotations

import math
from collections.abc import Callable

from rich import box
from rich.console import Console, Group
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from gradscope.render import Checked
from gradscope.render.chart import log_chart
from gradscope.render.numerics import (
    HEADROOM_COLUMNS,
    headroom_legend,
    headroom_rows,
    largest_line,
    underflow_summary,
)
from gradscope.render.parts import parts
from gradscope.report import (
    DEFAULT_FAIL_ON,
    BaselineComparison,
    Coverage,
    DepthLayer,
    DepthStack,
    Fix,
    Numerics,
    RecurrentCore,
    Report,
    SequenceGradient,
    named,
)

STATUS_STYLE = {
    "healthy": "bold green",
    "vanishing": "bold yellow",
    "exploding": "bold red",
    "nonfinite": "bold magenta",
    "not-measured": "bold cyan",
    "regression": "bold red",
}
SHORT_DIRECTION = {"forward": "fwd", "reverse": "rev"}
#: At most this many gradient charts; the rest of the cores are in the table only.
MAX_CHARTS = 8
#: A stack of more blocks shows the blocks at each end and evenly spaced blocks between.
MAX_DEPTH_ROWS = 24
DEPTH_END_ROWS = 3
DEPTH_MIDDLE_ROWS = 8
#: The depth chart's width: log_chart's default, which a short stack is stretched to fill.
CHART_WIDTH = 60


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


def percent(fraction: float | None) -> str:
    """A fraction as a percentage for a table cell; empty where it was not measured."""
    return "" if fraction is None else number(100 * fraction, "{:.1f}")


def probe_line(report: Report) -> str:
    """With which probe: its length and horizon for recurrent cores, else its input shape."""
    settings = report.settings
    if report.stack is not None and not report.recurrent:
        shape = settings.input_shape
        size = "×".join(str(n) for n in shape) if shape else f"batch {settings.batch}"
        return (
            f"probe {settings.probe}: input {size}, seed {settings.seed}, "
            f"{settings.dtype} on {settings.device} · epsilon {settings.epsilon:g}"
        )
    return (
        f"probe {settings.probe}: {settings.steps} steps × batch {settings.batch}, "
        f"seed {settings.seed}, {settings.dtype} on {settings.device} · horizon "
        f"{settings.distance} steps · epsilon {settings.epsilon:g} · burn-in "
        f"{settings.burn_in}"
    )


def header(report: Report) -> Text:
    """Two lines: what was analysed, and with which probe."""
    model = report.model
    text = Text()
    text.append(f"gradscope {report.gradscope_version}", style="bold")
    text.append(
        f"  {model.path or 'model object'} · {model.checkpoint_kind} · "
        f"{model.class_name or 'architecture inferred from weights'} · "
        f"{model.parameters:,} parameters\n"
    )
    return text.append(probe_line(report), style="dim")


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
            number(core.jacobian.spectral_radius.median),
            number(core.jacobian.sigma_max.max),
            status_text(core.status),
        )
    return table


def gradient_chart(core: RecurrentCore) -> Panel:
    """||dL/ds|| against lag (steps before the core's last step), log scale."""
    title = Text(f"{core.label}: ‖dL/ds‖ against steps before the last, log scale")
    return Panel(Text(log_chart([core.grad_norm_by_lag])), title=title, title_align="left")


def shown_blocks(count: int) -> list[int]:
    """Which of ``count`` blocks the depth table shows, input side first.

    All of them up to MAX_DEPTH_ROWS; beyond, DEPTH_END_ROWS at each end and DEPTH_MIDDLE_ROWS
    evenly spaced between, where a run of one hidden block is shown (it takes a row either way).
    """
    if count <= MAX_DEPTH_ROWS:
        return list(range(count))
    first, last = DEPTH_END_ROWS - 1, count - DEPTH_END_ROWS
    step = (last - first) / (DEPTH_MIDDLE_ROWS + 1)
    shown = set(range(DEPTH_END_ROWS)) | set(range(last, count))
    shown |= {first + round(step * k) for k in range(1, DEPTH_MIDDLE_ROWS + 1)}
    shown |= {i for i in range(count) if i - 1 in shown and i + 1 in shown}
    return sorted(shown)


def _skip(layer: DepthLayer) -> str:
    if not layer.residual:
        return ""
    return "✓" if layer.branch_chi is None else "✓ " + number(layer.branch_chi, "{:.3f}")


def _depth_frame(title: str | Text) -> Table:
    """A borderless table with gaps of two, as the depth tables use (a ``Text`` title is not
    read as markup)."""
    return Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1, 0, 0),
    )


#: Block names longer than this are shortened by their shared container (an 80-column log).
LONG_NAME = 14


def shared_prefix(names: list[str]) -> str | None:
    """``transformer.``: the first part of the module path that most blocks share, when some
    name is longer than LONG_NAME (their table then shows ``…h.0`` for ``transformer.h.0``)."""
    parts = [part.split(".", 1)[0] for name in names for part in name.split("+") if "." in part]
    if not parts or max(map(len, names)) <= LONG_NAME:
        return None
    top = max(set(parts), key=parts.count)
    return f"{top}." if parts.count(top) * 2 >= len(names) else None


def shortened(name: str, prefix: str | None) -> str:
    """``name`` with ``prefix`` written as an ellipsis in each of its joined parts."""
    if not prefix:
        return name
    return "+".join(
        "…" + part[len(prefix) :] if part.startswith(prefix) else part for part in name.split("+")
    )


def depth_table(layers: list[DepthLayer]) -> Table:
    """One row per block, input side first; long stacks show their ends and a sample between.

    Columns for residual blocks (skip, with the branch's χ), saturated and dead units appear only
    where some block has them. Gaps of two (the cores table has three) leave 64 of 80 columns
    to the text of nine columns.
    """
    prefix = shared_prefix([layer.name for layer in layers])
    title = "Depth stack, input side first"
    table = _depth_frame(title + (f" (… stands for {prefix})" if prefix else ""))
    columns: list[tuple[str, Callable[[DepthLayer], str]]] = [
        ("‖dL/da‖", lambda layer: number(layer.grad_norm)),
        ("gain", lambda layer: number(layer.gain, "{:.3f}")),
        ("χ(J)", lambda layer: number(layer.chi)),
        ("σ max", lambda layer: number(layer.sigma_max)),
    ]
    if any(layer.residual for layer in layers):
        columns.append(("skip", _skip))
    if any(layer.saturated is not None for layer in layers):
        columns.append(("sat %", lambda layer: percent(layer.saturated)))
    if any(layer.dead is not None for layer in layers):
        columns.append(("dead %", lambda layer: percent(layer.dead)))
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("block", overflow="fold", ratio=1)
    table.add_column("type", overflow="fold")
    for title, _ in columns:
        table.add_column(title, justify="right", no_wrap=True, min_width=len(title))
    previous = -1
    for index in shown_blocks(len(layers)):
        if index > previous + 1:
            table.add_row(Text("…", style="dim"), Text(f"{index - previous - 1} more", style="dim"))
        layer = layers[index]
        table.add_row(
            str(index + 1),
            Text(shortened(layer.name, prefix)),
            layer.type,
            *(cell(layer) for _, cell in columns),
        )
        previous = index
    return table


def depth_summary(depth: DepthStack) -> Table:
    """The whole stack in one row: blocks, change from output to input, spread, status."""
    table = _depth_frame("Whole stack")
    for column in ("blocks", "residual", "output → input", "per block", "spread"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_row(
        str(depth.blocks),
        str(depth.residual_blocks),
        f"{number(depth.decades, '{:+.1f}')} decades",
        number(depth.gain_per_block, "{:.3f}"),
        "n/a" if depth.spread is None else number(depth.spread),
        status_text(depth.status),
    )
    return table


def depth_legend(depth: DepthStack) -> Text:
    """What gain, χ and spread mean, the granularity, and the estimators' probe counts.

    The estimators' descriptions are in the JSON; their counts are enough here.
    """
    counts = [
        f"{key} {value}"
        for key, value in depth.estimator.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    ]
    return Text(
        "gain: gradient in / gradient out of the block · χ(J): mean squared singular value of "
        "its Jacobian · spread: σ max / RMS σ of the input-output Jacobian · granularity "
        f"{depth.granularity} · matrix-free estimates: {', '.join(counts) or 'see the JSON'}",
        style="dim",
    )


def sigma_line(layers: list[DepthLayer]) -> Text | None:
    """Why some blocks have no σ max: forward-mode AD could not pass through them; and which
    blocks had theirs through attention's math backend."""
    missing = [layer.name for layer in layers if math.isnan(layer.sigma_max)]
    through = [layer.name for layer in layers if layer.sigma_max_method == "jvp-math-attention"]
    parts = []
    if missing:
        parts.append(
            f"σ max n/a for {named(missing)}: forward-mode AD cannot pass through them (a "
            "fused kernel, or a custom autograd.Function, without a forward derivative); χ "
            "and the gradients are measured"
        )
    if through:
        parts.append(
            f"σ max of {named(through)} through attention's math backend (its fused kernel has "
            "no forward derivative)"
        )
    return Text(" · ".join(parts), style="dim") if parts else None


def shortcut_line(layers: list[DepthLayer]) -> Text | None:
    """The residual blocks whose skip is a projection shortcut, not the identity."""
    projected = [f"{layer.name} ({layer.shortcut})" for layer in layers if layer.shortcut]
    if not projected:
        return None
    return Text(
        f"skip through a projection shortcut: {named(projected)}; the branch's χ is that of "
        "J − P, P the shortcut path's Jacobian",
        style="dim",
    )


def side_outputs_line(layers: list[DepthLayer]) -> Text | None:
    """The blocks' side outputs (skips, caches, attention weights): branches not followed."""
    sides = [side for layer in layers for side in layer.side_outputs]
    if not sides:
        return None
    return Text(
        f"side outputs, branches off the stack the depth view does not follow: {named(sides)}",
        style="dim",
    )


def depth_chart(layers: list[DepthLayer]) -> Panel:
    """||dL/da|| against block, input side on the left, log scale; short stacks stretched."""
    repeat = max(1, CHART_WIDTH // len(layers))
    norms = [layer.grad_norm for layer in layers for _ in range(repeat)]
    ends = ("block 1 (input side)", f"block {len(layers)} (output side)")
    title = Text("depth: ‖dL/da‖ at each block's output, log scale")
    return Panel(Text(log_chart([norms], x_ends=ends)), title=title, title_align="left")


def sequence_panel(view: SequenceGradient) -> Panel:
    """||dL/dx|| against lag from the step the loss reads, log scale, with the reach."""
    where = {"last": "the last step", "all": "each step"}.get(str(view.loss_at))
    where = where or f"step {view.loss_at}"
    reach = (
        f"reaches back every one of the {len(view.grad_norm_by_lag)} steps measured"
        if view.effective_horizon is None
        else f"reaches back {view.effective_horizon} step(s)"
    )
    line = Text(f"{reach} (horizon {view.distance}): ").append(status_text(view.status))
    ends = ("lag 0", f"lag {len(view.grad_norm_by_lag) - 1}")
    chart = Text(log_chart([view.grad_norm_by_lag], x_ends=ends))
    title = Text(f"sequence: ‖dL/dx‖ against lag from the loss at {where}, log scale")
    return Panel(Group(line, chart), title=title, title_align="left")


#: What a healthy verdict on a vanilla RNN cannot promise (the calibration in the README).
VANILLA_CAVEAT = (
    " At these weights: a vanilla RNN has no gates to hold information, and training can "
    "shorten its horizon (watch it with gradscope.Monitor)."
)


def _nothing_found(report: Report) -> str:
    caveat = VANILLA_CAVEAT if any(c.cell.startswith("rnn_") for c in report.recurrent) else ""
    if report.stack is None:
        return "Gradients survive the horizon in every core." + caveat
    if report.recurrent:
        return "Gradients survive the horizon in every core and the depth of the stack." + caveat
    return "Gradients survive the depth of the stack."


def verdict(report: Report) -> Panel:
    """The overall status and every finding; "in what was measured" where a part was not."""
    lines = []
    if report.status == "healthy":
        survive = _nothing_found(report)
        lines.append(Text(survive if report.complete else f"In what was measured: {survive}"))
    for finding in report.findings:
        if finding.ignored:
            lines.append(Text(f"○ ignored ({finding.id}): {finding.message}", style="dim"))
            continue
        marker = "✖" if finding.severity == "error" else "!"
        line = Text(f"{marker} ", style=STATUS_STYLE.get(finding.kind, ""))
        lines.append(line.append(finding.message, style="default"))
    title = Text("Verdict: ").append(status_text(report.status.upper()))
    if not report.complete:
        title.append(" in what was measured")
    return Panel(Text("\n").join(lines), title=title, title_align="left")


VIEW_WORDS = {
    "recurrent": "over time",
    "depth": "over depth",
    "end-to-end": "end to end",
    "lookup": "lookups",
}


def coverage_line(coverage: Coverage) -> Text:
    """What share of the parameters was measured, and by which view."""
    views = "; ".join(
        f"{VIEW_WORDS.get(view, view)}: "
        + (
            named([m or "(model)" for m in modules])
            if len(modules) <= 4
            else f"{len(modules)} modules"
        )
        for view, modules in coverage.views.items()
    )
    whole = coverage.measured_parameters == coverage.parameters
    share = "all" if whole else f"{number(100 * coverage.share, '{:.1f}')}% of"
    recurrences = [m for group in coverage.unmeasured_recurrence for m in group.modules]
    return Text(
        f"coverage: {share} {coverage.parameters:,} parameters measured"
        + (f" ({views})" if views else "")
        + (f"; a recurrence not measured over time: {named(recurrences)}" if recurrences else ""),
        style="dim",
    )


#: How each measured number of a fix is named and written.
EFFECT_FORMS = {
    "memory_horizon": ("horizon", "{:.1f}"),
    "lambda_1": ("λ1", "{:+.3f}"),
    "decades": ("decades", "{:+.1f}"),
}


def fix_effect_line(fix: Fix, distance: int | None) -> Text | None:
    """``measured on a copy: encoder horizon 15.3 → 98.4 ...; healthy at horizon 100``, or
    why it was not measured; None when nothing was tried."""
    if not fix.effect:
        return Text(f"{fix.measured}\n", style="dim") if fix.measured else None
    changes = []
    for e in fix.effect:
        name, form = EFFECT_FORMS.get(e.metric, (e.metric, "{:.3g}"))
        changes.append(f"{e.where} {name} {number(e.before, form)} → {number(e.after, form)}")
    line = Text("measured on a copy: " + ", ".join(changes))
    if fix.status_after:
        line.append("; ").append(status_text(fix.status_after))
        over_time = any(e.metric == "memory_horizon" for e in fix.effect)
        line.append(f" at horizon {distance}" if distance and over_time else "")
    if fix.helps is False:
        line.append("; did not help", style="bold")
    return line.append(f" ({fix.measured})\n", style="dim")


def fix_panels(report: Report) -> list[Panel]:
    """One panel per fix: why and what, then the snippet."""
    panels = []
    for fix in report.fixes:
        snippet = Syntax(fix.snippet, "python", theme="ansi_dark", background_color="default")
        measured = fix_effect_line(fix, report.settings.distance)
        parts = [Text(fix.detail + "\n"), *([measured] if measured else []), snippet]
        panels.append(
            Panel(
                Group(*parts),
                title=f"fix {fix.id}: {fix.title}"
                + (" (tried: did not help)" if fix.helps is False else ""),
                title_align="left",
            )
        )
    return panels


def headroom_table(numerics: Numerics) -> Table:
    """Each dtype's range against the largest values and where gradients underflow it."""
    table = _depth_frame(Text(largest_line(numerics)))  # module paths, not markup
    for column in HEADROOM_COLUMNS[:4]:
        table.add_column(column, justify="left" if column == "dtype" else "right", no_wrap=True)
    table.add_column(HEADROOM_COLUMNS[4], overflow="fold", ratio=1)
    for row in headroom_rows(numerics):
        table.add_row(*map(Text, row))  # core labels hold brackets, not markup
    return table


def baseline_table(comparison: BaselineComparison) -> Table:
    """Every number compared with the baseline: before, after, and whether it got worse."""
    table = Table(
        title=f"Against the baseline {comparison.path} (tolerance "
        f"{100 * comparison.tolerance:.0f}%)",
        title_justify="left",
    )
    for column in ("part", "metric", "before", "after", "worse"):
        table.add_column(column)
    for change in comparison.changes:
        table.add_row(
            change.where,
            change.metric.replace("lambda_1", "λ1").replace("_", " "),
            number(change.before),
            number(change.after),
            Text("worse", style="bold red") if change.worse else "",
        )
    return table


def checks_table(checked: list[Checked]) -> Table:
    """One row per model and part (core, stack, sequence view); one per model not checked."""
    table = Table(title="gradscope check", title_justify="left", expand=False)
    for column in ("model", "part", "kind", "rate", "reach"):
        table.add_column(column, overflow="fold")
    table.add_column("status", no_wrap=True)
    for entry in checked:
        if entry.report is None:
            table.add_row(entry.name, "", "", "", "", Text("error", style="bold red"))
            continue
        rows = parts(entry.report) or [None]
        for index, part in enumerate(rows):
            name = entry.name if index == 0 else ""
            if part is None:
                table.add_row(name, "", "", "", "", status_text(entry.report.status))
                continue
            table.add_row(
                name, part.name, part.kind, part.rate, part.reach, status_text(part.status)
            )
    return table


class TextRenderer:
    """The terminal report: header, cores and stack with their charts, verdict, fixes."""

    def __init__(self, fail_on: tuple[str, ...] = DEFAULT_FAIL_ON) -> None:
        self.fail_on = fail_on

    def write_checks(self, checked: list[Checked], console: Console) -> None:
        """A summary table of every model, then the verdict and fixes of each that fails,
        and why each model not checked was not."""
        console.print(checks_table(checked))
        for entry in checked:
            if entry.report is None:
                console.print(f"{entry.name}: error: {entry.error}", style="bold red")
            elif entry.report.fails(self.fail_on):
                console.print(Text(f"\n{entry.name} ({entry.path})", style="bold"))
                console.print(verdict(entry.report))
                for panel in fix_panels(entry.report):
                    console.print(panel)
            else:
                for finding in entry.report.findings:
                    if finding.ignored:
                        text = f"{entry.name}: ○ ignored ({finding.id}): {finding.message}"
                        console.print(text, style="dim")

    def write(self, report: Report, console: Console) -> None:
        """Print the whole terminal report."""
        console.print(header(report))
        console.print()
        if report.recurrent:
            console.print(cores_table(report.recurrent))
        for core in report.recurrent[:MAX_CHARTS]:
            console.print(gradient_chart(core))
        if len(report.recurrent) > MAX_CHARTS:
            console.print(f"(charts for the first {MAX_CHARTS} cores; the JSON has every one)")
        if report.layers:
            console.print(depth_table(report.layers))
        if report.stack is not None:
            console.print(depth_summary(report.stack))
            console.print(depth_legend(report.stack))
            lines = (
                sigma_line(report.layers),
                shortcut_line(report.layers),
                side_outputs_line(report.layers),
            )
            for line in lines:
                if line is not None:
                    console.print(line)
        if report.layers:
            console.print(depth_chart(report.layers))
        if report.sequence is not None:
            console.print(sequence_panel(report.sequence))
        if report.numerics is not None and report.numerics.traced:
            console.print(headroom_table(report.numerics))
            summary = underflow_summary(report.numerics)
            if summary:
                console.print(Text(summary))
            console.print(Text(headroom_legend(report.settings.loss_at), style="dim"))
        if report.baseline is not None:
            console.print(baseline_table(report.baseline))
        console.print(verdict(report))
        for panel in fix_panels(report):
            console.print(panel)
        if report.coverage is not None:
            console.print(coverage_line(report.coverage))
        for note in report.model.notes:
            console.print(f"note: {note}", style="dim")
