"""The plot extra: figures written as PNG, SVG and PDF, a figure for notebooks, and one line
when matplotlib is missing."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

import gradscope
from gradscope.cli import main
from gradscope.errors import GradscopeError
from gradscope.render.plot import MISSING, save

pytest.importorskip("matplotlib")  # the test extra installs it

SIGNATURES = {".png": b"\x89PNG\r\n\x1a\n", ".pdf": b"%PDF", ".svg": b"<?xml"}


@pytest.fixture(scope="module")
def report() -> gradscope.Report:
    torch.manual_seed(0)
    return gradscope.analyze(nn.LSTM(4, 8, num_layers=2), steps=20, what_if=False)


@pytest.mark.parametrize("suffix", [".png", ".svg", ".pdf"])
def test_the_figure_is_written_in_the_format_its_suffix_names(report, tmp_path, suffix):
    path = tmp_path / "figures" / f"report{suffix}"
    save(report, str(path))
    data = path.read_bytes()
    assert data.startswith(SIGNATURES[suffix])
    assert len(data) > 10_000  # four charts and a sequence view, not an empty canvas


def test_a_report_returns_its_figure_for_a_notebook(report):
    figure = report.plot()
    # two axes per panel: each core (gradient, spectrum) and the sequence view
    assert len(figure.axes) == 2 * (len(report.recurrent) + 1)
    titles = [axes.get_title() for axes in figure.axes]
    assert any("Lyapunov spectrum" in title for title in titles)


def test_a_depth_stack_is_drawn_with_its_gain(tmp_path):
    torch.manual_seed(0)
    layers = []
    for _ in range(6):
        layers += [nn.Linear(16, 16), nn.Tanh()]
    report = gradscope.analyze(nn.Sequential(*layers), input_shape=(8, 16), what_if=False)
    titles = [axes.get_title() for axes in report.plot().axes]
    assert any("depth stack" in t for t in titles) and "gain per block" in titles


def test_without_matplotlib_one_line_says_how_to_get_it(report, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(GradscopeError) as raised:
        report.plot()
    assert str(raised.value) == MISSING and "gradscope[plot]" in MISSING


def test_plot_on_the_command_line(tmp_path, capsys):
    torch.manual_seed(0)
    path = tmp_path / "gru.pt"
    torch.save(nn.GRU(4, 8), path)
    code = main(["analyze", str(path), "--steps", "10", "--plot", str(tmp_path / "g.png")])
    assert code in (0, 1) and (tmp_path / "g.png").stat().st_size > 10_000
    capsys.readouterr()
    code = main(["analyze", str(path), "--steps", "10", "--plot", str(tmp_path / "g.jpg")])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""  # refused before any work
    assert captured.err.count("\n") == 1 and "--plot" in captured.err and ".png" in captured.err
