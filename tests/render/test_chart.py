"""The log-scale chart: decays on straight lines, zeros skipped, each series its own mark."""

from __future__ import annotations

import math

from gradscope.render.chart import log_chart


def test_chart_places_a_geometric_decay_on_a_straight_line():
    lines = log_chart([[10.0**-k for k in range(8)]], height=8, width=8).splitlines()
    plot = [line.split("│", 1)[1] for line in lines[:8]]
    assert [row.index("•") for row in plot] == list(range(8))
    assert lines[0].startswith(" 1e+00") and lines[7].startswith(" 1e-07")


def test_chart_skips_zeros_and_says_when_nothing_is_left():
    assert log_chart([[0.0, 0.0]]) == "(no non-zero gradient to plot)"
    lines = log_chart([[1.0, 0.0, math.inf, 0.01]], height=3, width=4).splitlines()
    assert sum(line.count("•") for line in lines) == 2
    # the zero is counted under the axis, not silently dropped
    assert lines[-1].strip() == "(exactly 0 at 1 of 4 points: no mark on a log scale)"
    assert "exactly 0" not in log_chart([[1.0, 0.1]])


def test_chart_marks_each_series_differently():
    text = log_chart([[1.0, 0.1], [1.0, 10.0]], height=3, width=2)
    assert "•" in text and "x" in text
