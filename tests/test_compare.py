"""gradscope compare: checkpoints and saved reports side by side, in the order given (quoted
globs in natural order), with the series every part traces."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import gradscope
from gradscope.cli import main
from gradscope.compare import compare, natural_key

from tests.helpers.html_check import assert_self_contained, parsed

STEPS = 20


def lstm_with_forget_bias(bias: float) -> nn.LSTM:
    """An LSTM whose forget gate's total bias is ``bias``: its horizon grows with it."""
    torch.manual_seed(0)
    model = nn.LSTM(4, 8)
    with torch.no_grad():
        model.bias_ih_l0[8:16].fill_(bias)
        model.bias_hh_l0[8:16].zero_()
    return model


@pytest.fixture
def epochs(tmp_path, monkeypatch):
    """Checkpoints epoch-1, epoch-2 and epoch-10, their forget bias growing with the epoch."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".git").mkdir()
    for epoch, bias in ((1, 0.0), (2, 1.5), (10, 3.0)):
        torch.save(lstm_with_forget_bias(bias).state_dict(), tmp_path / f"epoch-{epoch}.pt")
    return tmp_path


def test_natural_order_puts_epoch_2_before_epoch_10():
    names = ["epoch-10.pt", "epoch-2.pt", "epoch-1.pt"]
    assert sorted(names, key=natural_key) == ["epoch-1.pt", "epoch-2.pt", "epoch-10.pt"]


def test_three_checkpoints_trace_each_cores_series_in_natural_order(epochs, capsys):
    assert main(["compare", "epoch-*.pt", "--steps", str(STEPS), "-f", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [entry["name"] for entry in data["inputs"]] == [
        "epoch-1.pt",
        "epoch-2.pt",
        "epoch-10.pt",
    ]
    (series,) = data["series"]
    expected = [
        gradscope.analyze(str(epochs / f"epoch-{e}.pt"), steps=STEPS).recurrent[0]
        for e in (1, 2, 10)
    ]
    assert series["memory_horizon"] == pytest.approx([c.memory_horizon for c in expected])
    assert series["lambda_1"] == pytest.approx([c.top_exponent for c in expected])
    assert series["memory_horizon"] == sorted(series["memory_horizon"])  # a larger bias keeps more


def test_saved_reports_and_checkpoints_compare_alike_and_the_last_decides_the_exit(epochs, capsys):
    main(["analyze", "epoch-10.pt", "--steps", str(STEPS), "-f", "json"])
    (epochs / "late.json").write_text(capsys.readouterr().out)
    assert main(["compare", "late.json", "epoch-1.pt", "--steps", str(STEPS), "-f", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    (series,) = data["series"]
    assert series["status"] == ["healthy", "vanishing"]
    assert main(["compare", "epoch-1.pt", "late.json", "--steps", str(STEPS)]) == 0
    text = capsys.readouterr().out
    assert "epoch-1.pt" in text and "late.json" in text and "change" in text


def test_parts_that_appear_or_disappear_are_said():
    first = {
        "schema_version": 1,
        "status": "healthy",
        "recurrent": [{"name": "enc", "cell": "gru"}],
    }
    second = {
        "schema_version": 1,
        "status": "healthy",
        "recurrent": [{"name": "dec", "cell": "gru", "lyapunov": [-0.1], "memory_horizon": 69.1}],
    }
    comparison = compare([("a", first), ("b", second)])
    assert [part.name for part in comparison.parts] == ["enc", "dec"]
    assert comparison.notes == ["enc is only in a", "dec is only in b"]
    assert comparison.parts[1].reaches == [None, 69.1]


def test_compare_needs_two_inputs_and_reads_only_reports(epochs, capsys):
    assert main(["compare", "epoch-1.pt"]) == 2
    assert "two inputs or more" in capsys.readouterr().err
    (epochs / "bad.json").write_text("{}")
    assert main(["compare", "bad.json", "epoch-1.pt"]) == 2
    assert "not a gradscope JSON report" in capsys.readouterr().err


def test_compare_writes_a_self_contained_html_page(epochs, capsys):
    assert main(["compare", "epoch-*.pt", "--steps", str(STEPS), "--html", "cmp.html"]) == 0
    capsys.readouterr()
    page = (epochs / "cmp.html").read_text(encoding="utf-8")
    structure = parsed(page)
    assert_self_contained(page, structure)
    assert "reach across the inputs" in page and "epoch-10.pt" in page
