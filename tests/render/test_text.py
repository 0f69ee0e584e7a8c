"""Rendering reads a report and computes nothing: charts, and whole reports against golden files.

Regenerate the golden files after an intended change with GRADSCOPE_UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import math
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from gradscope.render import write
from gradscope.render.chart import log_chart
from gradscope.render.demo import write_demo
from gradscope.render.text import MAX_DEPTH_ROWS, shown_blocks
from gradscope.report import Report

from tests.helpers import depth_samples
from tests.helpers.samples import core, report_of

GOLDEN = Path(__file__).parent / "golden"


def plain_console(buffer: io.StringIO) -> Console:
    return Console(file=buffer, width=80, color_system=None, force_terminal=False)


def rendered(report: Report, output_format: str = "text") -> str:
    buffer = io.StringIO()
    write(report, output_format, plain_console(buffer))
    return buffer.getvalue()


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("GRADSCOPE_UPDATE_GOLDEN"):
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")


def test_chart_places_a_geometric_decay_on_a_straight_line():
    lines = log_chart([[10.0**-k for k in range(8)]], height=8, width=8).splitlines()
    plot = [line.split("│", 1)[1] for line in lines[:8]]
    assert [row.index("•") for row in plot] == list(range(8))
    assert lines[0].startswith(" 1e+00") and lines[7].startswith(" 1e-07")


def test_chart_skips_zeros_and_says_when_nothing_is_left():
    assert log_chart([[0.0, 0.0]]) == "(no non-zero gradient to plot)"
    lines = log_chart([[1.0, 0.0, math.inf, 0.01]], height=3, width=4).splitlines()
    assert sum(line.count("•") for line in lines) == 2


def test_chart_marks_each_series_differently():
    text = log_chart([[1.0, 0.1], [1.0, 10.0]], height=3, width=2)
    assert "•" in text and "x" in text


def test_text_report_for_a_vanishing_rnn_matches_the_golden_file():
    check_golden("vanishing_rnn.txt", rendered(report_of(core("rnn_tanh", -0.675))))


def test_text_report_for_a_healthy_bidirectional_lstm_matches_the_golden_file():
    forward = core("lstm", -0.01, hidden_size=32, num_layers=1, bidirectional=True)
    reverse = core(
        "lstm", -0.012, hidden_size=32, num_layers=1, bidirectional=True, direction="reverse"
    )
    check_golden("healthy_lstm.txt", rendered(report_of(forward, reverse)))


def test_text_report_has_no_escape_codes_without_colour():
    assert "\x1b[" not in rendered(report_of(core("rnn_tanh", 0.2)))


def test_json_format_writes_the_report_and_nothing_else():
    report = report_of(core("gru", -0.45))
    assert json.loads(rendered(report, "json")) == report.to_dict()


@pytest.mark.parametrize("status", ["vanishing", "exploding"])
def test_verdict_panel_names_the_status(status):
    exponent = -0.5 if status == "vanishing" else 0.5
    assert f"Verdict: {status.upper()}" in rendered(report_of(core("rnn_tanh", exponent)))


# --- the depth view ----------------------------------------------------------------------------


def depth_rows(text: str) -> list[str]:
    """The depth table's lines below its rule, up to the whole-stack summary."""
    lines = text.split("Depth stack, input side first", 1)[1].splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("─"))
    end = next(i for i, line in enumerate(lines) if line.startswith("Whole stack"))
    return lines[rule + 1 : end]


def test_text_report_for_a_deep_sigmoid_mlp_matches_the_golden_file():
    check_golden("depth_sigmoid_mlp.txt", rendered(depth_samples.sigmoid_mlp_report()))


def test_text_report_with_recurrent_cores_and_a_depth_stack_matches_the_golden_file():
    text = rendered(depth_samples.mixed_report())
    assert text.index("Recurrent cores") < text.index("Depth stack") < text.index("Verdict")
    check_golden("mixed_lstm_depth.txt", text)


def test_a_short_stack_shows_every_block():
    assert shown_blocks(MAX_DEPTH_ROWS) == list(range(MAX_DEPTH_ROWS))
    rows = depth_rows(rendered(depth_samples.mixed_report()))
    assert [row.split()[0] for row in rows] == [str(n) for n in range(1, 21)]


@pytest.mark.parametrize("count", [MAX_DEPTH_ROWS + 1, 50, 152, 1000])
def test_a_long_stack_shows_its_ends_and_evenly_spaced_blocks_between(count):
    shown = shown_blocks(count)
    assert shown[:3] == [0, 1, 2] and shown[-3:] == [count - 3, count - 2, count - 1]
    gaps = [after - before - 1 for before, after in itertools.pairwise(shown)]
    assert all(gap != 1 for gap in gaps), "a single hidden block is shown instead"
    assert len(shown) + sum(1 for gap in gaps if gap) < MAX_DEPTH_ROWS
    if count >= 50:
        assert max(gaps) - min(gap for gap in gaps if gap) <= 1


def test_the_more_rows_account_for_every_hidden_block():
    rows = depth_rows(rendered(depth_samples.sigmoid_mlp_report()))
    shown = [row for row in rows if not row.lstrip().startswith("…")]
    hidden = [int(re.search(r"(\d+) more", row)[1]) for row in rows if "more" in row]
    assert len(shown) + sum(hidden) == 50
    assert shown[0].split()[:2] == ["1", "net.0"] and shown[-1].split()[:2] == ["50", "net.98"]


@pytest.mark.parametrize(
    "report",
    [
        depth_samples.sigmoid_mlp_report(),
        depth_samples.relu_mlp_report(),
        depth_samples.residual_report(),
        depth_samples.residual_report(152, 152**-0.5),
        depth_samples.mixed_report(),
    ],
    ids=["sigmoid", "relu", "residual", "resnet-152-like", "mixed"],
)
def test_depth_reports_fit_80_columns_and_read_as_plain_text(report):
    text = rendered(report)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "\x1b[" not in text
    assert "block 1 (input side)" in text and f"block {len(report.layers)} (output side)" in text


def test_every_optional_column_fits_80_columns_with_names_folded_not_cut():
    report = depth_samples.residual_report(152, 152**-0.5)
    for layer in report.layers:
        layer.saturated = 0.05
    rows = depth_rows(rendered(report))
    assert max(len(row.rstrip()) for row in rows) <= 80
    assert rows[0].split()[-3:] == ["0.007", "5.0", "0.5"]
    assert "ResidualBlock" not in rendered(report), "the type folds first"


def test_optional_columns_appear_only_where_measured():
    def heading(report: Report) -> set[str]:
        text = rendered(report)
        return set(text.split("Depth stack, input side first", 1)[1].splitlines()[1].split())

    sigmoid = heading(depth_samples.sigmoid_mlp_report())
    assert "sat" in sigmoid and not {"dead", "skip"} & sigmoid
    assert {"dead", "skip"} <= heading(depth_samples.residual_report())
    assert "sat" not in heading(depth_samples.relu_mlp_report())


def test_whole_stack_summary_reads_the_stack():
    text = rendered(depth_samples.residual_report())
    summary = text.split("Whole stack", 1)[1].splitlines()
    assert " ".join(summary[1].split()) == "blocks residual output → input per block spread status"
    assert summary[3].split() == ["50", "50", "+7.6", "decades", "1.417", "4.1", "exploding"]


def test_depth_status_is_coloured_like_the_recurrent_statuses():
    buffer = io.StringIO()
    console = Console(file=buffer, width=80, color_system="standard", force_terminal=True)
    write(depth_samples.sigmoid_mlp_report(), "text", console)
    assert "\x1b[1;33mvanishing" in buffer.getvalue()


def test_non_finite_depth_numbers_read_as_such():
    report = depth_samples.relu_mlp_report()
    report.layers[0].chi = math.nan
    report.layers[1].grad_norm = math.inf
    report.depth.spread = None
    rows = depth_rows(rendered(report))
    assert "n/a" in rows[0] and "inf" in rows[1]
    assert "n/a" in rendered(report).split("Whole stack", 1)[1].splitlines()[3]


def test_verdict_reads_a_finding_on_the_whole_stack():
    report = depth_samples.sigmoid_mlp_report()
    assert "module" not in report.findings[0].where
    text = rendered(report)
    assert "Verdict: VANISHING" in text
    assert "✖ depth stack (50 blocks, net.0 … net.98)" in text
    assert "fix residual-connections" in text and "fix change-activation" in text


@pytest.mark.parametrize(
    ("report", "message"),
    [
        (depth_samples.relu_mlp_report(), "Gradients survive the depth of the stack."),
        (
            dataclasses.replace(depth_samples.mixed_report(), status="healthy", findings=[]),
            "Gradients survive the horizon in every core and the depth of the stack.",
        ),
    ],
)
def test_a_healthy_verdict_names_what_was_measured(report, message):
    assert message in " ".join(rendered(report).split())


def test_depth_only_header_names_the_input_shape_not_steps():
    text = rendered(depth_samples.relu_mlp_report())
    assert "probe gaussian: input 64×512, seed 0, float64 on cpu · epsilon 0.001" in text
    assert "burn-in" not in text


def test_json_format_writes_the_depth_layers_and_stack():
    report = depth_samples.mixed_report()
    report.layers[0].chi = math.nan
    report.depth.sigma_max = math.inf
    data = json.loads(rendered(report, "json"))
    assert data == report.to_dict()
    assert len(data["layers"]) == 20 and data["depth"]["blocks"] == 20
    first = data["layers"][0]
    assert {"name", "type", "grad_norm", "gain", "chi", "sigma_max", "residual"} <= set(first)
    assert first["name"] == "head.0" and first["chi"] is None
    assert data["depth"]["status"] == "vanishing" and data["depth"]["sigma_max"] is None
    assert data["findings"][0]["where"] == {
        "stack": "depth",
        "blocks": 20,
        "first": "head.0",
        "last": "head.38",
    }


def test_json_of_a_report_without_a_stack_has_empty_layers_and_no_depth():
    data = json.loads(rendered(report_of(core("gru", -0.45)), "json"))
    assert data["layers"] == [] and data["depth"] is None


def demo_rendered(results) -> str:
    buffer = io.StringIO()
    write_demo(results, "text", plain_console(buffer))
    return buffer.getvalue()


def test_demo_shows_deep_stacks_side_by_side():
    deep = [
        (SimpleNamespace(name="mlp-sigmoid", description="sigmoid, Xavier"), report)
        for report in [depth_samples.sigmoid_mlp_report()]
    ]
    deep += [
        (SimpleNamespace(name="mlp-relu", description="ReLU, He"), depth_samples.relu_mlp_report()),
        (SimpleNamespace(name="residual", description="x + F(x)"), depth_samples.residual_report()),
    ]
    text = demo_rendered(deep)
    assert "recurrent models" not in text and "deep feed-forward and residual stacks" in text
    assert "• mlp-sigmoid   x mlp-relu   o residual" in text
    assert "block 1 (input side)" in text and "block 50 (output side)" in text
    for name, status in [("mlp-sigmoid", "vanishing"), ("mlp-relu", "healthy")]:
        assert re.search(rf"{name} .* {status}", text), name
    assert max(len(line) for line in text.splitlines()) <= 80


def test_demo_with_recurrent_models_and_deep_stacks_shows_both():
    lstm = report_of(core("lstm", -0.01))
    results = [
        (SimpleNamespace(name="rnn", description="tanh"), report_of(core("rnn_tanh", -0.675))),
        (SimpleNamespace(name="lstm-forget-1", description="forget 1"), lstm),
        (SimpleNamespace(name="mlp", description="sigmoid"), depth_samples.sigmoid_mlp_report()),
    ]
    text = demo_rendered(results)
    assert text.index("recurrent models") < text.index("deep feed-forward")
    assert "probe gaussian: input 64×512" in text
