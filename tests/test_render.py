"""Rendering reads a report and computes nothing: charts, and whole reports against golden files.

Regenerate the golden files after an intended change with GRADSCOPE_UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import pytest
from rich.console import Console

from gradscope.diagnosis import diagnose
from gradscope.render import write
from gradscope.render.chart import log_chart
from gradscope.report import Report

from samples import MODEL, SETTINGS, core

GOLDEN = Path(__file__).parent / "golden"


def rendered(report: Report, output_format: str = "text") -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=80, color_system=None, force_terminal=False)
    write(report, output_format, console)
    return buffer.getvalue()


def report_of(*cores) -> Report:
    status, assessed, findings, fixes = diagnose(list(cores), 1e-3)
    return Report(status, SETTINGS, MODEL, "0.1.0", [1.0] * 100, assessed, [], findings, fixes)


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
