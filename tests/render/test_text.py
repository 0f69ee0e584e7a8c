"""The text report reads a report and computes nothing; whole reports against golden files.

Regenerate the golden files after an intended change with
``python -m pytest tests/render --update-golden``.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import math
import re

import pytest
from rich.console import Console

from gradscope.coverage import parts_coverage
from gradscope.diagnosis.coverage import coverage_findings
from gradscope.render import write
from gradscope.render.text import MAX_DEPTH_ROWS, shown_blocks
from gradscope.report import Coverage, Report, Unmeasured

from tests.helpers import depth_samples
from tests.helpers.rendering import rendered
from tests.helpers.samples import core, report_of


def test_text_report_for_a_vanishing_rnn_matches_the_golden_file(golden):
    golden("vanishing_rnn.txt", rendered(report_of(core("rnn_tanh", -0.675))))


def test_text_report_for_a_healthy_bidirectional_lstm_matches_the_golden_file(golden):
    forward = core("lstm", -0.01, hidden_size=32, num_layers=1, bidirectional=True)
    reverse = core(
        "lstm", -0.012, hidden_size=32, num_layers=1, bidirectional=True, direction="reverse"
    )
    golden("healthy_lstm.txt", rendered(report_of(forward, reverse)))


def test_text_report_has_no_escape_codes_without_colour():
    assert "\x1b[" not in rendered(report_of(core("rnn_tanh", 0.2)))


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


def test_text_report_for_a_deep_sigmoid_mlp_matches_the_golden_file(golden):
    golden("depth_sigmoid_mlp.txt", rendered(depth_samples.sigmoid_mlp_report()))


def test_text_report_with_recurrent_cores_and_a_depth_stack_matches_the_golden_file(golden):
    text = rendered(depth_samples.mixed_report())
    assert text.index("Recurrent cores") < text.index("Depth stack") < text.index("Verdict")
    golden("mixed_lstm_depth.txt", text)


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
    report.stack.spread = None
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


def test_a_long_list_of_parts_not_measured_is_named_in_a_few_words():
    report = report_of(core("rnn_tanh", -0.01))
    entries = {f"head.{i} (2 tensors)": 10 for i in range(20)}
    report.coverage = parts_coverage({"rnn": 80}, 280, entries)
    report.findings += coverage_findings(report.coverage)
    text = rendered(report)
    assert (
        "head.0 (2 tensors), head.1 (2 tensors), head.2 (2 tensors), head.3 (2 tensors) "
        "and 16 more" in " ".join(text.replace("│", " ").split())
    )
    assert "coverage: 28.6% of 280 parameters measured (over time: rnn)" in text
    assert "Verdict: HEALTHY in what was measured" in text
    assert "In what was measured: Gradients survive" in text
    assert len(report.to_dict()["coverage"]["not_measured"][0]["modules"]) == 20


def test_side_outputs_are_named_as_branches_under_the_stack():
    report = depth_samples.relu_mlp_report()
    report.layers[0].side_outputs = ["blocks.0[1]"]
    report.layers[1].side_outputs = ["blocks.1[1]"]
    text = rendered(report)
    assert "side outputs, branches off the stack the depth view does not follow: " in text
    assert "blocks.0[1], blocks.1[1]" in text
    assert "side outputs" not in rendered(depth_samples.relu_mlp_report())


def test_a_missing_sigma_max_is_explained():
    report = depth_samples.relu_mlp_report()
    report.layers[2].sigma_max = math.nan
    text = " ".join(rendered(report).split())
    assert f"σ max n/a for {report.layers[2].name}: forward-mode AD cannot pass" in text
    assert "σ max n/a for" not in rendered(depth_samples.relu_mlp_report())


def test_the_coverage_line_names_a_recurrence_no_view_measured():
    report = depth_samples.relu_mlp_report()
    report.coverage = Coverage(
        parameters=10,
        measured_parameters=10,
        share=1.0,
        views={"depth": ["net"]},
        not_measured=[Unmeasured("its forward computes a scan", ["(model) (Scan)"], 0, True)],
        complete=False,
    )
    text = " ".join(rendered(report).split())
    assert (
        "coverage: all 10 parameters measured (over depth: net); a recurrence not measured "
        "over time: (model) (Scan)" in text
    )


def plain(report: Report) -> str:
    """The rendered report as one line of words, without the panels' borders."""
    return " ".join(rendered(report).replace("│", " ").split())


def test_a_healthy_vanilla_rnn_is_healthy_at_these_weights_only():
    # the calibration: orthogonal vanilla RNNs judged healthy lost their horizon in training
    healthy = report_of(core("rnn_tanh", 0.0))
    text = plain(dataclasses.replace(healthy, status="healthy", findings=[]))
    assert "At these weights: a vanilla RNN has no gates to hold information" in text
    gated = report_of(core("lstm", 0.0))
    text = plain(dataclasses.replace(gated, status="healthy", findings=[]))
    assert "Gradients survive the horizon in every core." in text and "vanilla" not in text


# --- widths: CI logs at 80 columns, wide terminals at 120 -------------------------------------

REPORTS = {
    "vanishing_rnn": lambda: report_of(core("rnn_tanh", -0.675)),
    "depth_sigmoid_mlp": depth_samples.sigmoid_mlp_report,
    "mixed_lstm_depth": depth_samples.mixed_report,
}


def rendered_at(report: Report, width: int) -> str:
    buffer = io.StringIO()
    write(report, "text", Console(file=buffer, width=width, color_system=None))
    return buffer.getvalue()


@pytest.mark.parametrize("name", sorted(REPORTS))
def test_text_reports_at_120_columns_match_their_golden_files(golden, name):
    golden(f"{name}.120.txt", rendered_at(REPORTS[name](), 120))


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("name", sorted(REPORTS))
def test_no_line_is_wider_than_the_console_and_no_word_is_cut(name, width):
    report = REPORTS[name]()
    lines = rendered_at(report, width).splitlines()
    assert max(len(line) for line in lines) <= width
    # prose wraps at spaces: every word of every finding reads whole once the lines are joined
    prose = " ".join(line.strip("│ ") for line in lines)
    prose = re.sub(r"\s+", " ", prose)
    words = {w for f in report.findings for w in re.findall(r"[A-Za-z]{6,}", f.message)}
    cut = sorted(word for word in words if word not in prose)
    assert not cut, f"cut across lines at {width} columns: {cut}"
