"""Fixes measured on a copy of the model: models with a known answer after the fix."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradscope
from gradscope.options import AnalysisOptions
from gradscope.probe import Probe
from gradscope.report import FixId
from gradscope.theory import suggested_gate_bias
from gradscope.whatif import measure_fix

from tests.helpers.models import orthogonal, rnn_with_recurrence

STEPS = 30


def zeroed(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.zero_()
    return module.double()


def log_sigmoid(b: float) -> float:
    return -math.log1p(math.exp(-b))


@pytest.mark.parametrize(
    ("factory", "fix_id"),
    [(lambda: nn.LSTM(4, 8), "forget-gate-bias"), (lambda: nn.GRU(4, 8), "update-gate-bias")],
    ids=["lstm", "gru"],
)
def test_a_gate_bias_fix_gives_ln_sigmoid_of_the_bias_it_sets(factory, fix_id):
    model = zeroed(factory())
    report = gradscope.analyze(model, steps=STEPS, probe="zeros")
    (fix,) = [f for f in report.fixes if f.id == fix_id]
    bias = round(suggested_gate_bias(STEPS, 1e-3), 1)
    before, after = {e.metric: e for e in fix.effect}["lambda_1"], None
    after = {e.metric: e.after for e in fix.effect}["lambda_1"]
    assert before.before == pytest.approx(math.log(0.5), abs=1e-9)  # sigmoid(0) at zero weights
    assert after == pytest.approx(log_sigmoid(bias), abs=1e-9)
    assert fix.status_after == "healthy" and f"total gate bias {bias:.1f}" in fix.measured
    assert report.fixes[0].id == fix_id  # measured to help: listed first
    for parameter in model.parameters():  # the user's model is untouched
        assert not parameter.any()


def test_orthogonal_recurrent_weights_give_lambda_zero_at_the_origin():
    model = rnn_with_recurrence(0.5 * orthogonal(6, seed=2))
    probe = Probe(
        torch.zeros(STEPS, 1, 6, dtype=torch.float64, requires_grad=True), 0, 1, "zeros", 0
    )
    options = AnalysisOptions(steps=STEPS, batch=1, exponents=6).for_steps(STEPS, 1)
    before = gradscope.analyze(model, steps=STEPS, probe="zeros").recurrent
    measured = measure_fix(model, probe, options, FixId.ORTHOGONAL_INIT, before)
    (core,) = measured.cores
    assert before[0].top_exponent == pytest.approx(math.log(0.5), abs=1e-9)
    assert core.lyapunov == pytest.approx([0.0] * 6, abs=1e-9)  # |eig| = 1: no decay at all
    assert "orthogonal W_hh" in measured.change


def test_clipping_says_it_has_nothing_to_measure_and_no_what_if_measures_nothing():
    torch.manual_seed(0)
    model = rnn_with_recurrence(3 * torch.randn(64, 64, dtype=torch.float64) / 8)  # chaotic
    with torch.no_grad():
        model.weight_ih_l0.normal_(0, 0.1)
    report = gradscope.analyze(model, steps=STEPS)
    assert report.status == "exploding"
    clip = next(f for f in report.fixes if f.id == "clip-grad-norm")
    assert clip.effect == [] and "changes no Jacobian" in clip.measured
    orthogonal_fix = next(f for f in report.fixes if f.id == "orthogonal-init")
    assert orthogonal_fix.effect and orthogonal_fix.status_after is not None
    quiet = gradscope.analyze(model, steps=STEPS, what_if=False)
    assert all(f.effect == [] and f.measured is None for f in quiet.fixes)


def test_a_vanilla_rnn_swapped_for_a_gated_cell_is_measured_and_left_alone_in_the_model():
    from tests.helpers.models import Classifier

    torch.manual_seed(0)
    model = Classifier(nn.RNN(4, 16, batch_first=True)).double()
    report = gradscope.analyze(model, steps=40)
    assert report.status == "vanishing"
    fixes = {f.id: f for f in report.fixes}
    for fix_id, cls in (("use-lstm", "LSTM"), ("use-gru", "GRU")):
        fix = fixes[fix_id]
        horizon = {e.metric: e for e in fix.effect}["memory_horizon"]
        assert horizon.after > horizon.before and f"encoder as nn.{cls}" in fix.measured
    assert isinstance(model.encoder, nn.RNN)  # the user's model is not changed


def test_spectral_norm_brings_a_growing_map_to_the_identity():
    rnn = rnn_with_recurrence(1.5 * torch.eye(4, dtype=torch.float64), nonlinearity="relu")
    with torch.no_grad():
        rnn.bias_ih_l0.fill_(1.0)  # every unit stays active: J = W_hh
    report = gradscope.analyze(rnn, steps=STEPS, probe="zeros", exponents=4)
    fix = next(f for f in report.fixes if f.id == "spectral-norm")
    after = {e.metric: e.after for e in fix.effect}
    assert after["lambda_1"] == pytest.approx(0.0, abs=1e-9)  # J = I after the fix
    assert fix.status_after == "healthy" and "sigma_max(W_hh) = 1" in fix.measured


def test_a_fix_the_models_forward_cannot_run_says_why_in_one_sentence():
    class Unpacks(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.RNN(4, 16, batch_first=True)
            self.head = nn.Linear(16, 2)

        def forward(self, x):
            out, h = self.rnn(x)
            return self.head(out + h.transpose(0, 1))  # an LSTM's h is a pair

    torch.manual_seed(0)
    report = gradscope.analyze(Unpacks().double(), steps=40)
    fix = next(f for f in report.fixes if f.id == "use-lstm")
    assert fix.effect == [] and fix.measured.startswith("not measured: the model's forward")
    assert "--input-shape" not in fix.measured
