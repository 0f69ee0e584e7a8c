"""The SVG charts' axes and marks: round ticks, whole decades, zeros shown as zeros."""

from __future__ import annotations

import math
import re

import pytest

from gradscope.render.svg import (
    Chart,
    Series,
    decade_label,
    decade_ticks,
    heatmap,
    integer_ticks,
    line_chart,
    linear_ticks,
    shorten,
)

from tests.helpers.html_check import parsed


def tick_labels(svg: str, anchor: str) -> list[str]:
    return re.findall(rf'text-anchor="{anchor}">([^<]+)</text>', svg)


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (-0.54, 0.0, [-0.6, -0.5, -0.4, -0.3, -0.2, -0.1, 0.0]),
        (0.0, 1.0, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
    ],
)
def test_linear_ticks_are_round_and_cover_the_range(low, high, expected):
    ticks = linear_ticks(low, high)
    assert ticks == pytest.approx(expected)


def test_linear_ticks_never_exceed_the_count_asked_for_and_cover_any_range():
    for low, high in [(-3.7, 12.1), (0.001, 0.0037), (-1e6, 5.0), (2.0, 2.5)]:
        ticks = linear_ticks(low, high, most=5)
        assert ticks[0] <= low and ticks[-1] >= high
        assert len(ticks) <= 5 + 2


def test_decade_ticks_cover_the_range_in_whole_decades():
    assert decade_ticks(-19.3, -1.6) == [-20, -16, -12, -8, -4, 0]
    assert decade_ticks(-0.32, -0.17) == [-1, 0]  # a narrow range still spans a decade
    assert decade_ticks(-4.0, 0.0) == [-4, -3, -2, -1, 0]
    for low, high in [(-40.2, 3.3), (0.5, 0.6), (-7.0, -6.99)]:
        ticks = decade_ticks(low, high)
        assert ticks[0] <= low and ticks[-1] >= high and len(ticks) <= 8


def test_decade_labels_read_as_numbers_near_one():
    assert [decade_label(e) for e in (-3, -2, -1, 0, 1, 2, 3)] == [
        "1e-3",
        "0.01",
        "0.1",
        "1",
        "10",
        "100",
        "1e+3",
    ]


def test_integer_ticks_keep_both_ends_and_round_steps_between():
    assert integer_ticks(0, 99) == [0, 20, 40, 60, 80, 99]
    assert integer_ticks(1, 30) == [1, 5, 10, 15, 20, 25, 30]
    assert integer_ticks(0, 0) == [0]
    assert integer_ticks(0, 3) == [0, 1, 2, 3]


def test_long_names_are_shortened_from_the_left():
    assert shorten("encoder.layers.0.rnn[l2 reverse]", 16) == "…rnn[l2 reverse]"
    assert shorten("rnn", 16) == "rnn"


def test_a_log_chart_labels_whole_decades_and_numbers_blocks_from_one():
    values = [10.0**-k for k in range(30)][::-1]
    svg = line_chart(Chart("t", "d", "block", "g", [Series("g", values)], x_start=1))
    parsed(svg)
    labels = tick_labels(svg, "end")
    assert labels[0] == "1e-30" and labels[-1] == "1"
    x_labels = tick_labels(svg, "middle")
    assert "1" in x_labels and "30" in x_labels and "0" not in x_labels


def test_a_log_chart_says_how_many_points_are_exactly_zero():
    svg = line_chart(Chart("t", "d", "lag", "g", [Series("core", [0.7] + [0.0] * 99)]))
    assert "exactly 0 at 99 points" in re.search(r"<desc>([^<]+)</desc>", svg).group(1)
    assert "exactly 0 at 99 points (not drawn on a log scale)" in svg
    # no zero, no such words
    assert "exactly 0" not in line_chart(Chart("t", "d", "lag", "g", [Series("c", [1.0, 0.5])]))


def test_the_heatmap_draws_a_zero_as_grey_crossed_and_a_missing_value_not_at_all():
    rows = ["top", "top reverse", "broken"]
    values = [[1.0, 0.1, 0.01], [0.5, 0.0, 0.0], [1.0, math.nan, None]]
    svg = heatmap("t", "d", rows, values, "lag")
    parsed(svg)
    assert svg.count('fill="#bdbdbd"') == 2
    assert svg.count('stroke="#777"') == 2  # the cross: not told by colour alone
    assert "grey crossed: exactly 0" in svg
    shaded = re.findall(r'fill="rgb\((\d+),', svg)
    assert len(shaded) == 3 + 1 + 1
    # darker is larger: the 1.0 cells are the darkest, the 0.01 the lightest
    assert int(shaded[0]) < int(shaded[1]) < int(shaded[2])


def test_the_heatmap_grows_with_its_rows_so_names_never_overlap():
    rows = [f"layer{i}" for i in range(40)]
    svg = heatmap("t", "d", rows, [[1.0, 0.5]] * 40, "lag")
    height = int(re.search(r'height="(\d+)"', svg).group(1))
    assert height >= 40 * 14
