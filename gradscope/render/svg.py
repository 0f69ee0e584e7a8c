"""Charts as inline SVG text: a line chart on a log or linear scale, a bar chart and a heatmap.

Self-contained (no script, no external reference), each with a ``<title>`` and a ``<desc>``
for screen readers; series differ by marker and dash pattern as well as by colour. Only
drawing: the numbers come from the report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

WIDTH, HEIGHT = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 16, 40
#: Colour, dash pattern and marker per series, in turn: told apart without colour too.
STYLES = (
    ("#1f77b4", "", "circle"),
    ("#d62728", "6 3", "square"),
    ("#2ca02c", "2 2", "triangle"),
    ("#9467bd", "8 3 2 3", "diamond"),
)


@dataclass
class Series:
    """One line: its name and its y values at x = 0, 1, ... (None or non-finite: a gap)."""

    name: str
    values: Sequence[float | None]


@dataclass
class Mark:
    """A reference line: vertical at x, or horizontal at y, with its label."""

    label: str
    x: float | None = None
    y: float | None = None


@dataclass
class Chart:
    """A line chart's content and labels."""

    title: str
    description: str
    x_label: str
    y_label: str
    series: list[Series]
    log_y: bool = True
    marks: list[Mark] = field(default_factory=list)


def _usable(value: float | None, log_y: bool) -> bool:
    return value is not None and math.isfinite(value) and (value > 0 or not log_y)


def _range(values: list[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    if low == high:
        low, high = low - 0.5, high + 0.5
    return low, high


def _marker(kind: str, x: float, y: float, colour: str) -> str:
    if kind == "square":
        return f'<rect x="{x - 3:.1f}" y="{y - 3:.1f}" width="6" height="6" fill="{colour}"/>'
    if kind == "triangle":
        points = f"{x:.1f},{y - 4:.1f} {x - 4:.1f},{y + 3:.1f} {x + 4:.1f},{y + 3:.1f}"
        return f'<polygon points="{points}" fill="{colour}"/>'
    if kind == "diamond":
        points = f"{x:.1f},{y - 4:.1f} {x - 4:.1f},{y:.1f} {x:.1f},{y + 4:.1f} {x + 4:.1f},{y:.1f}"
        return f'<polygon points="{points}" fill="{colour}"/>'
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}"/>'


def _frame(title: str, description: str, body: list[str]) -> str:
    return "\n".join(
        [
            f'<svg role="img" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}">',
            f"<title>{escape(title)}</title>",
            f"<desc>{escape(description)}</desc>",
            *body,
            "</svg>",
        ]
    )


def line_chart(chart: Chart) -> str:
    """The chart as an SVG element; an empty frame says so when nothing can be drawn."""
    points = [
        (x, float(v))
        for series in chart.series
        for x, v in enumerate(series.values)
        if _usable(v, chart.log_y)
    ]
    if not points:
        return _frame(chart.title, chart.description + " (no finite values to draw)", [])
    scale = math.log10 if chart.log_y else (lambda v: v)
    ys = [scale(y) for _, y in points]
    marked = [scale(m.y) for m in chart.marks if _usable(m.y, chart.log_y)]
    y_low, y_high = _range(ys + marked)
    x_high = max(max(len(s.values) for s in chart.series) - 1, 1)
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def at(x: float, y: float) -> tuple[float, float]:
        return (
            LEFT + inner_w * x / x_high,
            TOP + inner_h * (1 - (scale(y) - y_low) / (y_high - y_low)),
        )

    body = [
        f'<rect x="{LEFT}" y="{TOP}" width="{inner_w}" height="{inner_h}" fill="none" '
        'stroke="#999"/>',
        f'<text x="{LEFT + inner_w / 2:.0f}" y="{HEIGHT - 6}" text-anchor="middle" '
        f'font-size="12">{escape(chart.x_label)}</text>',
        f'<text x="12" y="{TOP + inner_h / 2:.0f}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 12 {TOP + inner_h / 2:.0f})">{escape(chart.y_label)}</text>',
    ]
    for value, anchor in ((y_high, TOP + 10), (y_low, TOP + inner_h)):
        label = f"1e{value:+.0f}" if chart.log_y else f"{value:.3g}"
        body.append(
            f'<text x="{LEFT - 4}" y="{anchor:.0f}" font-size="11" text-anchor="end">{label}</text>'
        )
    body += [
        f'<text x="{LEFT}" y="{HEIGHT - 22}" font-size="11">0</text>',
        f'<text x="{LEFT + inner_w}" y="{HEIGHT - 22}" font-size="11" text-anchor="end">'
        f"{x_high}</text>",
    ]
    for mark in chart.marks:
        if mark.x is not None and 0 <= mark.x <= x_high:
            x = LEFT + inner_w * mark.x / x_high
            body.append(
                f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + inner_h}" '
                'stroke="#555" stroke-dasharray="4 4"/>'
                f'<text x="{x + 3:.1f}" y="{TOP + 12}" font-size="11">{escape(mark.label)}</text>'
            )
        elif _usable(mark.y, chart.log_y):
            _, y = at(0, mark.y)  # type: ignore[arg-type]
            body.append(
                f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + inner_w}" y2="{y:.1f}" '
                'stroke="#555" stroke-dasharray="1 3"/>'
                f'<text x="{LEFT + inner_w - 4}" y="{y - 3:.1f}" font-size="11" '
                f'text-anchor="end">{escape(mark.label)}</text>'
            )
    for index, series in enumerate(chart.series):
        colour, dash, marker = STYLES[index % len(STYLES)]
        drawn = [at(x, float(v)) for x, v in enumerate(series.values) if _usable(v, chart.log_y)]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in drawn)
        dashes = f' stroke-dasharray="{dash}"' if dash else ""
        body.append(
            f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"'
            f"{dashes}><title>{escape(series.name)}</title></polyline>"
        )
        step = max(1, len(drawn) // 25)
        body += [_marker(marker, x, y, colour) for x, y in drawn[::step]]
        legend_y = TOP + 14 + 14 * index
        body.append(
            _marker(marker, LEFT + inner_w - 150, legend_y - 4, colour)
            + f'<text x="{LEFT + inner_w - 142}" y="{legend_y}" font-size="11">'
            f"{escape(series.name)}</text>"
        )
    return _frame(chart.title, chart.description, body)


def bar_chart(
    title: str, description: str, labels: Sequence[str], values: Sequence[float], y_label: str
) -> str:
    """Bars around zero (the Lyapunov spectrum: negative contracts, positive expands)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return _frame(title, description + " (no finite values to draw)", [])
    low, high = _range([min([*finite, 0.0]), max([*finite, 0.0])])
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    width = inner_w / max(len(values), 1)

    def y_of(v: float) -> float:
        return TOP + inner_h * (1 - (v - low) / (high - low))

    zero = y_of(0.0)
    body = [
        f'<line x1="{LEFT}" y1="{zero:.1f}" x2="{LEFT + inner_w}" y2="{zero:.1f}" stroke="#555"/>',
        f'<text x="{LEFT - 4}" y="{TOP + 10}" font-size="11" text-anchor="end">{high:.3g}</text>',
        f'<text x="{LEFT - 4}" y="{TOP + inner_h}" font-size="11" text-anchor="end">{low:.3g}'
        "</text>",
        f'<text x="12" y="{TOP + inner_h / 2:.0f}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 12 {TOP + inner_h / 2:.0f})">{escape(y_label)}</text>',
    ]
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        if not math.isfinite(value):
            continue
        top, bottom = sorted((y_of(value), zero))
        x = LEFT + i * width + width * 0.15
        body.append(
            f'<rect x="{x:.1f}" y="{top:.1f}" width="{width * 0.7:.1f}" '
            f'height="{max(bottom - top, 0.5):.1f}" fill="#1f77b4" stroke="#000" '
            f'stroke-width="0.5"><title>{escape(label)}: {value:.4g}</title></rect>'
            f'<text x="{x + width * 0.35:.1f}" y="{HEIGHT - 22}" font-size="10" '
            f'text-anchor="middle">{escape(label)}</text>'
        )
    return _frame(title, description, body)


def heatmap(
    title: str,
    description: str,
    rows: Sequence[str],
    values: Sequence[Sequence[float | None]],
    x_label: str,
) -> str:
    """Rows against columns, shaded by log10 of each value (lighter is smaller)."""
    logs = [
        [math.log10(v) if v is not None and math.isfinite(v) and v > 0 else None for v in row]
        for row in values
    ]
    known = [v for row in logs for v in row if v is not None]
    if not known:
        return _frame(title, description + " (no finite values to draw)", [])
    low, high = _range(known)
    columns = max(len(row) for row in logs)
    inner_w = WIDTH - 150 - RIGHT
    inner_h = HEIGHT - TOP - BOTTOM
    cell_w, cell_h = inner_w / max(columns, 1), inner_h / max(len(rows), 1)
    body = [
        f'<text x="{150 + inner_w / 2:.0f}" y="{HEIGHT - 6}" text-anchor="middle" '
        f'font-size="12">{escape(x_label)}</text>',
        f'<text x="150" y="{HEIGHT - 22}" font-size="11">0</text>',
        f'<text x="{150 + inner_w}" y="{HEIGHT - 22}" font-size="11" text-anchor="end">'
        f"{columns - 1}</text>",
    ]
    for r, (name, row) in enumerate(zip(rows, logs, strict=True)):
        y = TOP + r * cell_h
        body.append(
            f'<text x="146" y="{y + cell_h / 2 + 4:.1f}" font-size="11" '
            f'text-anchor="end">{escape(name)}</text>'
        )
        for c, value in enumerate(row):
            if value is None:
                continue
            shade = int(235 - 200 * (value - low) / (high - low))
            body.append(
                f'<rect x="{150 + c * cell_w:.1f}" y="{y:.1f}" width="{cell_w + 0.5:.1f}" '
                f'height="{cell_h:.1f}" fill="rgb({shade},{shade},255)"/>'
            )
    body.append(
        f'<text x="{150 + inner_w}" y="{TOP - 4}" font-size="10" text-anchor="end">'
        f"dark: 1e{high:+.0f}, light: 1e{low:+.0f}</text>"
    )
    return _frame(title, description, body)
