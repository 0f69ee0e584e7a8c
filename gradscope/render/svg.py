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
    #: The number of the first point on the x axis (0 for lags, 1 for blocks counted from 1).
    x_start: int = 0


def _usable(value: float | None, log_y: bool) -> bool:
    return value is not None and math.isfinite(value) and (value > 0 or not log_y)


def _range(values: list[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    if low == high:
        low, high = low - 0.5, high + 0.5
    return low, high


def nice_step(span: float, most: int = 6) -> float:
    """The smallest of 1, 2 or 5 times a power of ten that cuts ``span`` in at most ``most``."""
    rough = span / most
    power = 10 ** math.floor(math.log10(rough)) if rough > 0 else 1.0
    return next(m * power for m in (1, 2, 5, 10) if m * power >= rough)


def linear_ticks(low: float, high: float, most: int = 6) -> list[float]:
    """Round values from ``low`` to ``high`` (both widened out to a tick), at most ``most`` + 1."""
    step = nice_step(high - low, most)
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [round(i * step, 12) for i in range(first, last + 1)]


def decade_ticks(low: float, high: float, most: int = 6) -> list[int]:
    """Whole decades (exponents) covering ``low`` to ``high`` in log10, every k-th one."""
    first, last = math.floor(low), math.ceil(high)
    if first == last:
        last += 1
    step = max(1, math.ceil((last - first) / most))
    first = step * math.floor(first / step)
    last = step * math.ceil(last / step)
    return list(range(first, last + 1, step))


def decade_label(exponent: int) -> str:
    """``0.01``, ``0.1``, ``1``, ``10``, ``100``; ``1e-5``, ``1e+4`` beyond."""
    return f"{10.0**exponent:g}" if -2 <= exponent <= 2 else f"1e{exponent:+d}"


def integer_ticks(first: int, last: int, most: int = 8) -> list[int]:
    """Round positions from ``first`` to ``last`` (both included) for an index axis."""
    if last <= first:
        return [first]
    step = max(1, int(nice_step(last - first, most)))
    inner = [t for t in range(step * math.ceil(first / step), last + 1, step)]
    ticks = sorted({first, *inner, last})
    # drop an inner tick that would crowd an end label
    gap = step / 2
    return [t for t in ticks if t in (first, last) or (t - first >= gap and last - t >= gap)]


def shorten(label: str, most: int) -> str:
    """``label`` cut to ``most`` characters from the left, an ellipsis standing for the rest."""
    return label if len(label) <= most else "…" + label[-(most - 1) :]


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


def _frame(title: str, description: str, body: list[str], height: int = HEIGHT) -> str:
    return "\n".join(
        [
            f'<svg role="img" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}">',
            f"<title>{escape(title)}</title>",
            f"<desc>{escape(description)}</desc>",
            *body,
            "</svg>",
        ]
    )


def _y_axis(ticks: list[float], y_of, labels: list[str], y_label: str) -> list[str]:
    """Tick labels and faint grid lines at ``ticks``, and the rotated axis name."""
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    body = [
        f'<text x="12" y="{TOP + inner_h / 2:.0f}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 12 {TOP + inner_h / 2:.0f})">{escape(y_label)}</text>'
    ]
    for tick, label in zip(ticks, labels, strict=True):
        y = y_of(tick)
        body.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + inner_w}" y2="{y:.1f}" stroke="#e4e4e4"/>'
            f'<text x="{LEFT - 4}" y="{y + 4:.1f}" font-size="11" text-anchor="end">'
            f"{escape(label)}</text>"
        )
    return body


def _x_axis(ticks: list[int], x_of, left: float, inner_w: float, x_label: str) -> list[str]:
    """Tick marks and labels under the plot, and the axis name."""
    body = [
        f'<text x="{left + inner_w / 2:.0f}" y="{HEIGHT - 6}" text-anchor="middle" '
        f'font-size="12">{escape(x_label)}</text>'
    ]
    for tick in ticks:
        x = x_of(tick)
        body.append(
            f'<line x1="{x:.1f}" y1="{HEIGHT - BOTTOM}" x2="{x:.1f}" y2="{HEIGHT - BOTTOM + 4}" '
            f'stroke="#555"/><text x="{x:.1f}" y="{HEIGHT - 22}" font-size="11" '
            f'text-anchor="middle">{tick}</text>'
        )
    return body


def line_chart(chart: Chart) -> str:
    """The chart as an SVG element; an empty frame says so when nothing can be drawn.

    A log axis runs over whole decades, a linear one over round values, with a tick and a
    faint grid line at each; the x axis numbers the points from ``chart.x_start``.
    """
    points = [
        (x, float(v))
        for series in chart.series
        for x, v in enumerate(series.values)
        if _usable(v, chart.log_y)
    ]
    if not points:
        return _frame(chart.title, chart.description + " (no finite values to draw)", [])
    zeros = sum(1 for s in chart.series for v in s.values if v == 0) if chart.log_y else 0
    description = chart.description
    if zeros:
        description += f"; exactly 0 at {zeros} points, which a log scale cannot show"
    scale = math.log10 if chart.log_y else (lambda v: v)
    ys = [scale(y) for _, y in points]
    marked = [scale(m.y) for m in chart.marks if _usable(m.y, chart.log_y)]
    y_low, y_high = _range(ys + marked)
    if chart.log_y:
        decades = decade_ticks(y_low, y_high)
        ticks, labels = [float(d) for d in decades], [decade_label(d) for d in decades]
    else:
        ticks = linear_ticks(y_low, y_high)
        labels = [f"{t:g}" for t in ticks]
    y_low, y_high = ticks[0], ticks[-1]
    count = max(len(s.values) for s in chart.series)
    x_first, x_last = chart.x_start, chart.x_start + max(count - 1, 1)
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x_of(x: float) -> float:
        return LEFT + inner_w * (x - x_first) / (x_last - x_first)

    def y_of(scaled: float) -> float:
        return TOP + inner_h * (1 - (scaled - y_low) / (y_high - y_low))

    def at(index: int, value: float) -> tuple[float, float]:
        return x_of(x_first + index), y_of(scale(value))

    body = [
        *_y_axis(ticks, y_of, labels, chart.y_label),
        f'<rect x="{LEFT}" y="{TOP}" width="{inner_w}" height="{inner_h}" fill="none" '
        'stroke="#999"/>',
        *_x_axis(integer_ticks(x_first, x_first + count - 1), x_of, LEFT, inner_w, chart.x_label),
    ]
    for mark in chart.marks:
        if mark.x is not None and x_first <= mark.x <= x_last:
            x = x_of(mark.x)
            body.append(
                f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + inner_h}" '
                'stroke="#555" stroke-dasharray="4 4"/>'
                f'<text x="{x + 3:.1f}" y="{TOP + 12}" font-size="11">{escape(mark.label)}</text>'
            )
        elif mark.y is not None and _usable(mark.y, chart.log_y):
            y = y_of(scale(mark.y))
            body.append(
                f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + inner_w}" y2="{y:.1f}" '
                'stroke="#555" stroke-dasharray="1 3"/>'
                f'<text x="{LEFT + inner_w - 4}" y="{y - 3:.1f}" font-size="11" '
                f'text-anchor="end">{escape(mark.label)}</text>'
            )
    if zeros:
        body.append(
            f'<text x="{LEFT + 6}" y="{TOP + inner_h - 6}" font-size="11">exactly 0 at {zeros} '
            "points (not drawn on a log scale)</text>"
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
            f"{escape(shorten(series.name, 22))}</text>"
        )
    return _frame(chart.title, description, body)


def bar_chart(
    title: str, description: str, labels: Sequence[str], values: Sequence[float], y_label: str
) -> str:
    """Bars around zero (the Lyapunov spectrum: negative contracts, positive expands)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return _frame(title, description + " (no finite values to draw)", [])
    ticks = linear_ticks(*_range([min([*finite, 0.0]), max([*finite, 0.0])]), most=5)
    low, high = ticks[0], ticks[-1]
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    width = inner_w / max(len(values), 1)
    every = max(1, math.ceil(len(values) / 16))  # a label on every k-th bar when there are many

    def y_of(v: float) -> float:
        return TOP + inner_h * (1 - (v - low) / (high - low))

    zero = y_of(0.0)
    body = [
        *_y_axis(ticks, y_of, [f"{t:g}" for t in ticks], y_label),
        f'<line x1="{LEFT}" y1="{zero:.1f}" x2="{LEFT + inner_w}" y2="{zero:.1f}" stroke="#555"/>',
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
        )
        if i % every == 0:
            body.append(
                f'<text x="{x + width * 0.35:.1f}" y="{HEIGHT - 22}" font-size="10" '
                f'text-anchor="middle">{escape(label)}</text>'
            )
    return _frame(title, description, body)


#: The heatmap's room for row names, in pixels and in characters.
NAMES_W, NAME_CHARACTERS = 170, 26
#: The heatmap's least row height, so that names never overlap.
ROW_H = 14
#: The fill of a cell whose value is exactly zero (no gradient reached it).
ZERO_FILL = "#bdbdbd"


def heatmap(
    title: str,
    description: str,
    rows: Sequence[str],
    values: Sequence[Sequence[float | None]],
    x_label: str,
) -> str:
    """Rows against columns, shaded by log10 of each value (lighter is smaller); a cell that
    is exactly zero is grey and crossed, one that is missing or not finite is left blank."""
    logs = [
        [math.log10(v) if v is not None and math.isfinite(v) and v > 0 else None for v in row]
        for row in values
    ]
    known = [v for row in logs for v in row if v is not None]
    if not known:
        return _frame(title, description + " (no finite values to draw)", [])
    low, high = _range(known)
    columns = max(len(row) for row in logs)
    inner_w = WIDTH - NAMES_W - RIGHT
    cell_w = inner_w / max(columns, 1)
    cell_h = max((HEIGHT - TOP - BOTTOM) / max(len(rows), 1), ROW_H)
    height = TOP + BOTTOM + cell_h * len(rows)
    zeros = any(v == 0 for row in values for v in row)

    def x_of(column: float) -> float:
        return NAMES_W + (column + 0.5) * cell_w

    body = [
        f'<text x="{NAMES_W + inner_w / 2:.0f}" y="{height - 6:.0f}" text-anchor="middle" '
        f'font-size="12">{escape(x_label)}</text>'
    ]
    for tick in integer_ticks(0, columns - 1):
        body.append(
            f'<text x="{x_of(tick):.1f}" y="{height - 22:.0f}" font-size="11" '
            f'text-anchor="middle">{tick}</text>'
        )
    for r, (name, row, raw) in enumerate(zip(rows, logs, values, strict=True)):
        y = TOP + r * cell_h
        body.append(
            f'<text x="{NAMES_W - 4}" y="{y + cell_h / 2 + 4:.1f}" font-size="11" '
            f'text-anchor="end">{escape(shorten(name, NAME_CHARACTERS))}<title>{escape(name)}'
            "</title></text>"
        )
        for c, (value, original) in enumerate(zip(row, raw, strict=True)):
            x = NAMES_W + c * cell_w
            if value is not None:
                shade = int(235 - 200 * (value - low) / (high - low))
                fill = f"rgb({shade},{shade},255)"
            elif original == 0:
                fill = ZERO_FILL
            else:
                continue
            body.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{cell_w + 0.5:.1f}" '
                f'height="{cell_h:.1f}" fill="{fill}"/>'
            )
            if value is None:  # exactly zero: crossed as well as grey, not told by colour alone
                body.append(
                    f'<line x1="{x:.1f}" y1="{y + cell_h:.1f}" x2="{x + cell_w:.1f}" y2="{y:.1f}" '
                    'stroke="#777" stroke-width="0.6"/>'
                )
    legend = f"dark: {decade_label(round(high))}, light: {decade_label(round(low))}"
    if zeros:
        legend += ", grey crossed: exactly 0"
    body.append(
        f'<text x="{NAMES_W + inner_w}" y="{TOP - 4}" font-size="10" text-anchor="end">'
        f"{escape(legend)}</text>"
    )
    return _frame(title, description, body, height=round(height))
