"""``--html FILE`` (and ``--format html``): one self-contained HTML page per report.

Styles and charts are inline (SVG, :mod:`gradscope.render.svg`): no script, no network, so
the file reads offline and as a CI artifact. Sections: the header (checkpoint, model, probe,
settings), the verdict and findings, each recurrent core (its gradient against lag with the
horizon and the 1/epsilon level marked, its Lyapunov spectrum), a layer x lag heatmap for
stacked or bidirectional cores, the depth stack (gradient and gain against depth), the
sequence view, the numbers (where NaN or Inf first appeared, the largest values, each dtype's
headroom), the fixes with their snippets and measured effects, and what was not measured.
"""

from __future__ import annotations

import math
from html import escape

from rich.console import Console

from gradscope.compare import Comparison
from gradscope.render import Checked
from gradscope.render.compare import METRIC_WORDS
from gradscope.render.numerics import (
    HEADROOM_COLUMNS,
    headroom_legend,
    headroom_rows,
    largest_line,
    underflow_summary,
)
from gradscope.render.svg import Chart, Mark, Series, bar_chart, heatmap, line_chart
from gradscope.render.text import number
from gradscope.report import DEFAULT_FAIL_ON, Fix, RecurrentCore, Report

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1340px; margin: 2em auto; padding: 0 1em;
       color: #111; line-height: 1.45; }
p, ul, pre { max-width: 980px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0 1em; display: block; max-width: 100%;
        overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
.status { font-weight: bold; padding: 0.1em 0.5em; border-radius: 3px; }
.healthy { background: #e3f4e3; } .vanishing, .exploding, .nonfinite { background: #fde2e1; }
th[scope=row] { font-weight: normal; color: #444; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
figure { margin: 0.5em 0 1.5em; } figcaption { font-size: 0.9em; color: #444; }
.legend { font-size: 0.9em; color: #444; }
figure svg { max-width: 100%; height: auto; }
.figures { display: flex; flex-wrap: wrap; gap: 0 1.5em; }
"""


def _status(status: str) -> str:
    return f'<span class="status {escape(status)}">{escape(status)}</span>'


def _table(header: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th scope='col'>{escape(cell)}</th>" for cell in header)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td class='number'>{cell}</td>" if i in numeric else f"<td>{cell}</td>"
            for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _facts(rows: list[tuple[str, str]]) -> str:
    """A two-column table whose first column names each row (already escaped values)."""
    body = "".join(
        f"<tr><th scope='row'>{escape(name)}</th><td>{value}</td></tr>" for name, value in rows
    )
    return f"<table><tbody>{body}</tbody></table>"


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{escape(caption)}</figcaption></figure>"


#: A table longer than this is folded (``<details>``): the charts above it show its shape.
FOLD_ROWS = 12


def _folded(summary: str, content: str, folded: bool) -> str:
    if not folded:
        return content
    return f"<details><summary>{escape(summary)}</summary>{content}</details>"


def _figures(*figures: str) -> str:
    """Figures side by side where the page is wide enough, one under another where not."""
    return f"<div class='figures'>{''.join(figures)}</div>"


def _header(report: Report) -> str:
    model, settings = report.model, report.settings
    shape = settings.input_shape or settings.inputs
    judged = f"epsilon {settings.epsilon:g}"
    if settings.distance is not None:
        judged = f"horizon {settings.distance} steps, {judged}"
    rows = [
        ("checkpoint", escape(model.path or "(a module object)")),
        ("format", escape(model.checkpoint_kind)),
        (
            "model",
            escape(
                f"{model.class_name or 'architecture inferred from weights'}, "
                f"{model.parameters:,} parameters"
            ),
        ),
        (
            "probe",
            escape(
                f"{settings.probe}, input {shape}, seed {settings.seed}, "
                f"{settings.dtype} on {settings.device}"
            ),
        ),
        ("judged over", escape(judged)),
        ("gradscope", escape(report.gradscope_version)),
    ]
    return "<h2>Checkpoint and probe</h2>" + _facts(rows)


def _verdict(report: Report) -> str:
    findings = "".join(
        f"<li><strong>{escape(f.severity)}</strong> <code>{escape(f.id)}</code>: "
        f"{escape(f.message)}{' (ignored)' if f.ignored else ''}</li>"
        for f in report.findings
    )
    scope = "" if report.complete else " in what was measured"
    return f"<h2>Verdict</h2><p>{_status(report.status)}{escape(scope)}</p>" + (
        f"<ul>{findings}</ul>" if findings else "<p>No findings.</p>"
    )


def _core_charts(core: RecurrentCore, epsilon: float) -> str:
    lags = core.grad_norm_by_lag
    marks = [Mark(f"horizon {core.distance}", x=core.distance)] if core.distance else []
    if core.memory_horizon is not None and math.isfinite(core.memory_horizon):
        marks.append(Mark(f"memory horizon {core.memory_horizon:.1f}", x=core.memory_horizon))
    if lags and lags[0] and math.isfinite(lags[0]):
        marks.append(Mark(f"lag 0 x epsilon ({1 / epsilon:,.0f}x down)", y=lags[0] * epsilon))
    gradient = line_chart(
        Chart(
            title=f"{core.label}: gradient norm against lag",
            description=(
                f"||dL/ds|| of {core.label} at each of {len(lags)} steps before the last, on a "
                f"log scale; lambda_1 {number(core.top_exponent)} per step, status "
                f"{core.status}"
            ),
            x_label="lag (steps before the last)",
            y_label="||dL/ds||",
            series=[Series(core.label, lags)],
            marks=marks,
        )
    )
    spectrum = bar_chart(
        f"{core.label}: Lyapunov spectrum",
        f"the top {len(core.lyapunov)} Lyapunov exponents of {core.label}, nats per step",
        [f"λ{i + 1}" for i in range(len(core.lyapunov))],
        core.lyapunov,
        "nats per step",
    )
    return f"<h3>{escape(core.label)} {_status(core.status)}</h3>" + _figures(
        _figure(gradient, f"{core.label}: gradient norm against lag, log scale"),
        _figure(spectrum, f"{core.label}: Lyapunov exponents (below zero: contracting)"),
    )


def _recurrent(report: Report) -> str:
    if not report.recurrent:
        return ""
    rows = [
        [
            escape(core.label),
            escape(core.cell),
            number(core.top_exponent),
            number(core.memory_horizon),
            number(core.jacobian.spectral_radius.median),
            number(core.jacobian.sigma_max.max),
            _status(core.status),
        ]
        for core in report.recurrent
    ]
    parts = [
        "<h2>Recurrent cores</h2>",
        _table(
            ["core", "cell", "λ1 per step", "memory horizon", "ρ(J) median", "σ(J) max", "status"],
            rows,
            numeric={2, 3, 4, 5},
        ),
    ]
    if len(report.recurrent) > 1:
        parts.append(
            _figure(
                heatmap(
                    "gradient norm by core and lag",
                    "each row a core (layer and direction), each column a lag; darker is a "
                    "larger gradient norm, on a log scale",
                    [core.label for core in report.recurrent],
                    [core.grad_norm_by_lag for core in report.recurrent],
                    "lag (steps before the last)",
                ),
                "layer x lag: the gradient norm of every core, log scale",
            )
        )
    parts += [_core_charts(core, report.settings.epsilon) for core in report.recurrent]
    return "".join(parts)


def _depth(report: Report) -> str:
    if report.stack is None or not report.layers:
        return ""
    stack = report.stack
    rows = [
        [
            str(i + 1),
            escape(layer.name),
            escape(layer.type),
            number(layer.grad_norm),
            number(layer.gain),
            number(layer.chi),
            number(layer.sigma_max),
            "yes" if layer.residual else "",
        ]
        for i, layer in enumerate(report.layers)
    ]
    gradient = line_chart(
        Chart(
            title="gradient norm against depth",
            description=(
                f"||dL/da|| at the output of each of {len(report.layers)} blocks, input side "
                f"first, log scale; {number(stack.decades, '{:+.1f}')} decades from output to input"
            ),
            x_label="block (input side first)",
            y_label="||dL/da||",
            series=[Series("gradient norm", [layer.grad_norm for layer in report.layers])],
            x_start=1,
        )
    )
    gain = line_chart(
        Chart(
            title="gain per block",
            description="gradient in over gradient out of each block, log scale; 1 keeps it",
            x_label="block (input side first)",
            y_label="gain",
            series=[Series("gain", [layer.gain for layer in report.layers])],
            marks=[Mark("gain 1", y=1.0)],
            x_start=1,
        )
    )
    return (
        "<h2>Depth stack</h2>"
        f"<p>{stack.blocks} blocks, {stack.residual_blocks} residual; "
        f"{number(stack.decades, '{:+.1f}')} decades from output to input; "
        f"{_status(stack.status)}</p>"
        + _figures(
            _figure(gradient, "gradient norm at each block's output, log scale"),
            _figure(gain, "gain per block, log scale"),
        )
        + _folded(
            f"the numbers of all {len(rows)} blocks",
            _table(
                ["#", "block", "type", "‖dL/da‖", "gain", "χ(J)", "σ max", "skip"],
                rows,
                numeric={0, 3, 4, 5, 6},
            ),
            folded=len(rows) > FOLD_ROWS,
        )
    )


def _sequence(report: Report) -> str:
    sequence = report.sequence
    if sequence is None or not sequence.grad_norm_by_lag:
        return ""
    marks = [Mark(f"horizon {sequence.distance}", x=sequence.distance)] if sequence.distance else []
    chart = line_chart(
        Chart(
            title="input gradient against lag",
            description=(
                f"||dL/dx|| by lag from the loss at step {sequence.loss_at}, log scale; "
                f"status {sequence.status}"
            ),
            x_label="lag",
            y_label="||dL/dx||",
            series=[Series("input gradient", sequence.grad_norm_by_lag)],
            marks=marks,
        )
    )
    return "<h2>Sequence view</h2>" + _figure(chart, "input gradient by lag, log scale")


def _numerics(report: Report) -> str:
    """Where NaN or Inf first appeared (forward, backward), the weights that held them, the
    largest values and each dtype's headroom."""
    numerics = report.numerics
    if numerics is None:
        return ""
    parts = ["<h2>Numbers</h2>"]
    if numerics.nonfinite_weights:
        rows = [
            [escape(f.name), f"{f.nan:,}", f"{f.inf:,}", f"{f.numel:,}"]
            for f in numerics.nonfinite_weights
        ]
        parts.append(
            "<p>Weights that hold NaN or Inf as loaded:</p>"
            + _table(["parameter", "NaN", "Inf", "values"], rows, numeric={1, 2, 3})
        )
    origins = [o for o in (numerics.forward, numerics.backward) if o is not None]
    if origins:
        rows = [
            [
                escape(o.direction),
                escape(o.value),
                escape(o.place),
                escape(o.op),
                "" if o.step is None else str(o.step),
                f"<code>{escape(o.source)}</code>" if o.source else "",
                escape(f"{o.cause}: {o.detail}"),
            ]
            for o in origins
        ]
        parts.append(_table(["pass", "first", "module", "operation", "step", "line", "why"], rows))
    if numerics.traced:
        parts.append(
            f"<p>{escape(largest_line(numerics))}</p>"
            + _table(
                list(HEADROOM_COLUMNS),
                [list(map(escape, r)) for r in headroom_rows(numerics)],
                numeric={1, 2, 3},
            )
            + (f"<p>{escape(summary)}</p>" if (summary := underflow_summary(numerics)) else "")
            + f"<p class='legend'>{escape(headroom_legend(report.settings.loss_at))}</p>"
        )
    return "".join(parts) if len(parts) > 1 else ""


def _fix(fix: Fix) -> str:
    effects = _table(
        ["part", "measure", "before", "after (on a copy)"],
        [
            [
                escape(e.where),
                escape(METRIC_WORDS.get(e.metric, e.metric)),
                number(e.before),
                number(e.after),
            ]
            for e in fix.effect
        ],
        numeric={2, 3},
    )
    if fix.effect:
        after = f"; {fix.status_after} after it" if fix.status_after else ""
        measured = (
            f"<p>Measured on a copy ({escape(fix.measured or 'applied')}){escape(after)}:</p>"
        )
    else:
        measured = f"<p>Not measured: {escape(fix.measured)}.</p>" if fix.measured else ""
    return (
        f"<h3>{escape(fix.title)} <code>{escape(fix.id)}</code></h3><p>{escape(fix.detail)}</p>"
        + measured
        + (effects if fix.effect else "")
        + f"<pre><code>{escape(fix.snippet)}</code></pre>"
    )


def _coverage(report: Report) -> str:
    coverage = report.coverage
    if coverage is None or not coverage.not_measured:
        return ""
    rows = [
        [escape(", ".join(group.modules)), f"{group.parameters:,}", escape(group.reason)]
        for group in coverage.not_measured
    ]
    return "<h2>Not measured</h2>" + _table(["modules", "parameters", "why"], rows, {1})


def body(report: Report) -> str:
    """The sections of one report, as HTML."""
    fixes = "".join(_fix(fix) for fix in report.fixes)
    notes = "".join(f"<li>{escape(note)}</li>" for note in report.model.notes)
    return "".join(
        [
            _verdict(report),
            _header(report),
            _recurrent(report),
            _depth(report),
            _sequence(report),
            _numerics(report),
            f"<h2>Fixes</h2>{fixes}" if fixes else "",
            _coverage(report),
            f"<h2>Notes</h2><ul>{notes}</ul>" if notes else "",
        ]
    )


def page(title: str, content: str) -> str:
    """A whole HTML document around ``content``."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>"
        f"<body><h1>{escape(title)}</h1>{content}</body></html>\n"
    )


def page_of(report: Report) -> str:
    """One report's whole page."""
    name = report.model.path or report.model.class_name or "model"
    return page(f"gradscope: {name}", body(report))


def comparison_page(comparison: Comparison) -> str:
    """``gradscope compare`` as one page: per part, its metrics and status at each input, and
    a chart of every part's reach across the inputs."""
    inputs = comparison.inputs
    sections = []
    for part in comparison.parts:
        rows = [
            [escape(METRIC_WORDS.get(metric, metric))] + [number(v) for v in values]
            for metric, values in (
                (part.rate_metric, part.rates),
                (part.reach_metric, part.reaches),
            )
        ]
        rows.append(["status"] + [_status(s) if s else "-" for s in part.statuses])
        sections.append(
            f"<h2>{escape(part.name)} ({escape(part.kind)})</h2>"
            + _table(["", *inputs], rows, numeric=set(range(1, len(inputs) + 1)))
        )
    reach = line_chart(
        Chart(
            title="reach across the inputs",
            description=(
                "each part's reach (memory horizon, or the sequence view's reach) at each input,"
                f" in order: {', '.join(inputs)}; log scale"
            ),
            x_label="input (in the order given)",
            y_label="steps",
            series=[Series(part.name, part.reaches) for part in comparison.parts],
        )
    )
    notes = "".join(f"<li>{escape(note)}</li>" for note in comparison.notes)
    content = (
        f"<p>Inputs, in order: {escape(', '.join(inputs))}; the last is "
        f"{_status(comparison.last_status)}</p>"
        + _figure(reach, "reach of every part across the inputs, log scale")
        + "".join(sections)
        + (f"<h2>Notes</h2><ul>{notes}</ul>" if notes else "")
    )
    return page("gradscope compare", content)


class HtmlRenderer:
    """The report as one self-contained HTML page; for ``check``, one section per model."""

    def __init__(self, fail_on: tuple[str, ...] = DEFAULT_FAIL_ON) -> None:
        self.fail_on = fail_on

    def write(self, report: Report, console: Console) -> None:
        """Write the page, bypassing rich's markup and wrapping."""
        console.file.write(page_of(report))
        console.file.flush()

    def write_checks(self, checked: list[Checked], console: Console) -> None:
        """One page: each model's name, then its report or why there is none."""
        entries = [(c.name, c.report, c.error) for c in checked]
        console.file.write(reports_page("gradscope check", entries))
        console.file.flush()


def reports_page(title: str, entries: list[tuple[str, Report | None, str | None]]) -> str:
    """Several models on one page (``check``, ``demo``): a summary table linking to each
    model's section, then each section: its report, or why there is none."""
    anchors = [f"model-{i + 1}" for i in range(len(entries))]
    summary = _table(
        ["model", "status"],
        [
            [
                f"<a href='#{anchor}'>{escape(name)}</a>",
                _status(report.status) if report is not None else escape(f"not analysed: {error}"),
            ]
            for anchor, (name, report, error) in zip(anchors, entries, strict=True)
        ],
    )
    sections = "".join(
        f"<section id='{anchor}'><h1>{escape(name)}</h1>"
        + (body(report) if report is not None else f"<p>{escape(error or '')}</p>")
        + "</section>"
        for anchor, (name, report, error) in zip(anchors, entries, strict=True)
    )
    return page(title, summary + sections)
