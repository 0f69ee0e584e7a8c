"""A plain-text chart of values on a log scale: readable in a terminal and in a CI log."""

from __future__ import annotations

import math

MARKS = ("•", "x", "o", "+")


def _bucket_means(values: list[float], columns: int) -> list[float | None]:
    """Mean log10 of the positive, finite values falling in each of ``columns`` columns."""
    buckets: list[list[float]] = [[] for _ in range(columns)]
    for index, value in enumerate(values):
        if value > 0 and math.isfinite(value):
            buckets[index * columns // len(values)].append(math.log10(value))
    return [sum(b) / len(b) if b else None for b in buckets]


def log_chart(
    series: list[list[float]],
    height: int = 8,
    width: int = 60,
    x_label: str = "lag",
    x_ends: tuple[str, str] | None = None,
) -> str:
    """Scatter each series (index on x, log10 value on y) as text lines, one mark per series.

    Zeros and non-finite values are left out (a last line counts the zeros); several indices
    per column share their mean log.
    The x axis reads ``{x_label} 0`` to ``{x_label} N-1`` unless ``x_ends`` names its two ends.
    """
    count = max(len(values) for values in series)
    columns = min(width, count)
    means = [_bucket_means(values + [0.0] * (count - len(values)), columns) for values in series]
    points = [m for column in means for m in column if m is not None]
    if not points:
        return "(no non-zero gradient to plot)"
    top, bottom = math.ceil(max(points)), math.floor(min(points))
    if top == bottom:
        top += 1
    grid = [[" "] * columns for _ in range(height)]
    for mark, column_means in zip(MARKS, means, strict=False):
        for column, mean in enumerate(column_means):
            if mean is not None:
                grid[round((top - mean) / (top - bottom) * (height - 1))][column] = mark
    labels = {0: top, height - 1: bottom}
    lines = [
        f"{f'1e{labels[row]:+03d}' if row in labels else '':>6} │{''.join(grid[row]).rstrip()}"
        for row in range(height)
    ]
    lines.append(" " * 7 + "└" + "─" * columns)
    left, right = x_ends or (f"{x_label} 0", f"{x_label} {count - 1}")
    lines.append(" " * 8 + left.ljust(max(columns - len(right), len(left) + 1)) + right)
    zeros = sum(1 for values in series for value in values if value == 0)
    if zeros:
        total = sum(len(values) for values in series)
        lines.append(" " * 8 + f"(exactly 0 at {zeros} of {total} points: no mark on a log scale)")
    return "\n".join(lines)
