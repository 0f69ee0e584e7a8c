"""Coverage: which modules the views measured; the rest named, never passed over as healthy.

Whether a parameter takes part in the output is checked against autograd itself (its gradient
is None exactly when it does not), and the shares against the parameter counts.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import gradscope
from gradscope.cli import main
from gradscope.coverage import (
    NOT_USED,
    READ_DIRECTLY,
    RECURRENT,
    module_coverage,
    parts_coverage,
)
from gradscope.dataflow import parameters_reached
from gradscope.report import DEFAULT_FAIL_ON, GradientHealthError

from tests.helpers.coverage_models import SpareLSTM, TiedHead


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_the_parameters_the_output_depends_on_are_those_autograd_reaches():
    torch.manual_seed(0)
    model = SpareLSTM()
    output = model(torch.randn(2, 5, 4))
    parameters = list(model.parameters())
    grads = torch.autograd.grad(output.sum(), parameters, allow_unused=True)

    reached = parameters_reached([output])

    assert {id(p) for p, g in zip(parameters, grads, strict=True) if g is not None} == {
        id(p) for p in parameters if id(p) in reached
    }
    assert id(model.spare.weight_hh_l0) not in reached
    assert id(model.offset) in reached


def test_modules_left_out_are_grouped_by_reason_with_exact_counts():
    model = SpareLSTM()
    used = parameters_reached([model(torch.randn(2, 5, 4))])

    coverage = module_coverage(
        model, {"recurrent": ["rnn"], "end-to-end": ["head"]}, used, ["head"]
    )

    groups = {group.reason: group for group in coverage.not_measured}
    assert set(groups) == {NOT_USED, READ_DIRECTLY}
    assert groups[NOT_USED].modules == ["spare (LSTM)"]
    assert groups[NOT_USED].parameters == _count(model.spare)
    assert groups[READ_DIRECTLY].modules == ["offset"]
    assert groups[READ_DIRECTLY].parameters == 3
    assert coverage.parameters == _count(model)
    assert coverage.measured_parameters == _count(model.rnn) + _count(model.head)
    assert coverage.share == pytest.approx(coverage.measured_parameters / _count(model))
    assert not coverage.complete and not coverage.unmeasured_recurrence


def test_a_recurrent_module_that_ran_but_was_not_measured_is_an_unmeasured_recurrence():
    model = SpareLSTM()

    coverage = module_coverage(model, {"end-to-end": ["head"]}, used=None)

    recurrent = coverage.unmeasured_recurrence
    assert [group.reason for group in recurrent] == [RECURRENT]
    assert recurrent[0].modules == ["rnn (GRU)", "spare (LSTM)"]


def test_shared_weights_count_once():
    model = TiedHead()
    coverage = module_coverage(model, {"depth": ["embed", "mix", "out"]}, used=None)

    assert coverage.parameters == _count(model)  # parameters() yields the tied weight once
    assert coverage.complete and coverage.share == 1.0


def test_weights_that_could_not_be_rebuilt_are_an_unmeasured_recurrence():
    coverage = parts_coverage(
        {"rnn": 100}, 130, {"odd: fits no module": 20, "head (2 tensors): not recurrent": 10}
    )

    assert [g.recurrent for g in coverage.not_measured] == [True, False]
    assert coverage.not_measured[1].modules == ["head (2 tensors)"]
    assert (coverage.measured_parameters, coverage.parameters) == (100, 130)


# --- end to end: the report, the verdict and the exit code ---------------------------------------


def test_a_healthy_model_with_an_unused_module_is_healthy_in_what_was_measured(capsys):
    model = SpareLSTM(gain=0.0)  # a zero recurrence: nothing to vanish over a 1-step horizon
    report = gradscope.analyze(model, steps=8, horizon=1)

    assert report.status == "healthy" and not report.complete
    assert [f.id for f in report.findings] == ["not-measured", "not-measured"]
    assert all(f.severity == "warning" for f in report.findings)
    assert "in what was measured" in report.summary()
    assert not report.fails(DEFAULT_FAIL_ON)
    assert report.fails(("incomplete",))
    report.assert_healthy()  # a warning does not fail the default gate
    data = json.loads(report.to_json())
    assert data["coverage"]["complete"] is False
    assert data["coverage"]["views"] == {"recurrent": ["rnn"], "end-to-end": ["head"]}


def test_weights_that_fit_no_recurrent_module_fail_the_default_gate(tmp_path, capsys):
    weights = nn.RNN(3, 4).state_dict()
    weights["odd.weight_ih_l0"] = torch.zeros(10, 3)
    weights["odd.weight_hh_l0"] = torch.zeros(10, 4)  # 10 rows: no recurrent module fits
    path = tmp_path / "odd.pt"
    torch.save(weights, path)

    code = main(["analyze", str(path), "--steps", "6", "--horizon", "1", "--format", "json"])
    data = json.loads(capsys.readouterr().out)
    errors = [f for f in data["findings"] if f["severity"] == "error"]
    assert code == 1
    assert [f["id"] for f in errors] == ["not-measured"]
    assert "odd" in errors[0]["message"] and "recurrence" in errors[0]["message"]

    relaxed = ["--fail-on", "vanishing,exploding,nonfinite"]
    assert main(["analyze", str(path), "--steps", "6", "--horizon", "1", *relaxed]) == 0
    with pytest.raises(GradientHealthError, match="not measured over time"):
        gradscope.analyze(path, steps=6, horizon=1).assert_healthy()


def test_fail_on_incomplete_fails_on_any_unmeasured_module(tmp_path, capsys):
    path = tmp_path / "spare.pt"
    torch.save(SpareLSTM(gain=0.0).state_dict(), path)
    model = ["--model", "tests.helpers.coverage_models:SpareLSTM", "--model-args", '{"gain": 0}']
    common = ["analyze", str(path), *model, "--steps", "8", "--horizon", "1"]

    assert main(common) == 0
    assert main([*common, "--fail-on", "incomplete"]) == 1
    out = capsys.readouterr().out
    assert "HEALTHY in what was measured" in out
    assert "coverage:" in out and "spare (LSTM)" in out


def test_an_unknown_fail_on_word_is_refused_with_the_choices(capsys):
    assert main(["analyze", "x.pt", "--fail-on", "partial"]) == 2
    assert "unmeasured-recurrence" in capsys.readouterr().err
