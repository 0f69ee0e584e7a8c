"""Fixes measured on a copy of the model: models with a known answer after the fix."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradscope
from gradscope.options import AnalysisOptions
from gradscope.probe import Probe
from gradscope.recurrent.measure import measure_recurrent
from gradscope.report import FixId
from gradscope.theory import suggested_gate_bias
from gradscope.whatif import fixed_copy

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
    fixed, change = fixed_copy(model, FixId.ORTHOGONAL_INIT, before, None, options)
    (core,) = measure_recurrent(fixed, probe, options).cores
    assert before[0].top_exponent == pytest.approx(math.log(0.5), abs=1e-9)
    assert core.lyapunov == pytest.approx([0.0] * 6, abs=1e-9)  # |eig| = 1: no decay at all
    assert "orthogonal W_hh" in change


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


class Branch(nn.Module):
    """x + lin(x): a residual block whose branch is one Linear."""

    def __init__(self, width: int, weight: float) -> None:
        super().__init__()
        self.lin = nn.Linear(width, width)
        with torch.no_grad():
            self.lin.weight.copy_(weight * torch.eye(width))
            self.lin.bias.zero_()

    def forward(self, x):
        return x + self.lin(x)


def test_a_scaled_residual_branch_gives_the_product_of_one_plus_its_gain():
    # each block's Jacobian is (1 + w) I, so the stack's is (1 + w)^L I: decades L log10(1 + w)
    depth, width, w = 20, 8, 2.0  # alpha = 1: the branch added in full, chi_B near w^2
    model = nn.Sequential(*[Branch(width, w) for _ in range(depth)]).double()
    report = gradscope.analyze(model, input_shape=(4, width))
    assert report.stack.decades == pytest.approx(depth * math.log10(1 + w), rel=1e-9)
    fix = next(f for f in report.fixes if f.id == "scale-residual-branch")
    # the factor the snippet writes: 1/sqrt(depth x chi_B), chi_B as measured and printed
    chi = sum(layer.branch_chi for layer in report.layers) / depth
    scale = 1 / math.sqrt(depth * float(f"{chi:.3g}"))
    assert f"scale = 1 / ({depth} * {chi:.3g}) ** 0.5" in fix.snippet
    (effect,) = fix.effect
    assert effect.metric == "decades" and effect.before == report.stack.decades
    assert effect.after == pytest.approx(depth * math.log10(1 + w * scale), rel=1e-9)
    assert fix.helps and fix.status_after == "healthy" and report.fixes[0] is fix
    assert model[0].lin.weight[0, 0] == w  # the user's model is untouched


def test_skips_around_a_stack_of_zero_maps_give_the_identity():
    width = 6
    model = nn.Sequential(*[nn.Linear(width, width) for _ in range(8)]).double()
    for layer in model:
        nn.init.zeros_(layer.weight)
    report = gradscope.analyze(model, input_shape=(4, width))
    assert report.status == "vanishing" and report.stack.decades == -math.inf
    fix = next(f for f in report.fixes if f.id == "residual-connections")
    (effect,) = fix.effect
    assert effect.after == pytest.approx(0.0, abs=1e-12)  # x + 0·x: J = I through all 8
    assert fix.status_after == "healthy" and "x + f(x) around 8 block(s)" in fix.measured
    assert isinstance(model[0], nn.Linear)


def test_orthogonal_weights_make_a_linear_stack_an_isometry():
    # a linear stack of 0.5 Q_l shrinks the gradient 2^L; orthogonal init (gain 1 for no
    # activation) makes every block an isometry: exactly no change in the gradient norm
    depth, width = 12, 8
    model = nn.Sequential(*[nn.Linear(width, width, bias=False) for _ in range(depth)]).double()
    with torch.no_grad():
        for index, layer in enumerate(model):
            layer.weight.copy_(0.5 * orthogonal(width, seed=index))
    report = gradscope.analyze(model, input_shape=(4, width))
    assert report.stack.decades == pytest.approx(depth * math.log10(0.5), rel=1e-9)
    fix = next(f for f in report.fixes if f.id == "orthogonal-init")
    (effect,) = fix.effect
    assert effect.after == pytest.approx(0.0, abs=1e-9)
    assert "gain 1" in fix.measured and fix.status_after == "healthy"


def test_a_saturating_stack_is_measured_with_relu_and_with_norms():
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(12) for m in (nn.Linear(16, 16), nn.Tanh())])
    with torch.no_grad():
        for layer in model[::2]:
            layer.weight.normal_(0, 0.05)
            layer.bias.normal_(0, 3.0)  # pre-activations far out on tanh's flat tails
    model = model.double()
    report = gradscope.analyze(model, input_shape=(8, 16))
    assert report.status == "vanishing"
    fixes = {f.id: f for f in report.fixes}
    swap = fixes["change-activation"]
    assert swap.effect[0].after > swap.effect[0].before and swap.helps
    assert "12 activation(s) made ReLU" in swap.measured
    norm = fixes["normalization"]
    assert norm.effect and "a norm after 12 layer(s)" in norm.measured
    assert isinstance(model[1], nn.Tanh) and isinstance(model[0], nn.Linear)


def test_batchnorm_put_in_by_the_fix_starts_from_the_probes_statistics():
    from gradscope.options import AnalysisOptions
    from gradscope.probe import make_probe
    from gradscope.whatif.depth import OVER_DEPTH

    torch.manual_seed(0)
    model = nn.Sequential(
        *[m for _ in range(4) for m in (nn.Conv1d(4, 4, 3, padding=1), nn.Sigmoid())]
    ).double()
    with torch.no_grad():
        for conv in model[::2]:
            conv.bias.fill_(5.0)  # sigmoid saturated: every block is inactive
    report = gradscope.analyze(model, input_shape=(16, 4, 10))
    assert any(f.id == "normalization" for f in report.fixes)
    options = AnalysisOptions(input_shape=(16, 4, 10))
    probe = make_probe(model, options, torch.device("cpu"))
    fixed, change = OVER_DEPTH[FixId.NORMALIZATION](model, report.stack, report.layers, 0, probe)
    norm = fixed[0][1]
    assert isinstance(norm, nn.BatchNorm1d) and not norm.training and change.endswith("4 layer(s)")
    with torch.no_grad():
        before = fixed[0][0](probe.inputs)
        out = norm(before)
    # the running statistics are the probe's: each channel comes out centred, with variance
    # v / (v n / (n - 1) + eps) for its variance v over the n values on the probe (BatchNorm
    # keeps the unbiased variance)
    v, n = before.var(dim=(0, 2), unbiased=False), before.numel() / before.shape[1]
    assert out.mean(dim=(0, 2)).abs().max() < 1e-9
    expected = v / (v * n / (n - 1) + norm.eps)
    assert torch.allclose(out.var(dim=(0, 2), unbiased=False), expected, rtol=1e-9)


def test_a_state_dict_without_its_class_has_its_fixes_measured_on_the_rebuilt_parts(tmp_path):
    lstm = nn.LSTM(4, 8)
    with torch.no_grad():
        for parameter in lstm.parameters():
            parameter.zero_()
    path = tmp_path / "weights.pt"
    torch.save({f"encoder.{k}": v for k, v in lstm.state_dict().items()}, path)
    report = gradscope.analyze(str(path), steps=STEPS, probe="zeros", dtype="float64")
    fix = next(f for f in report.fixes if f.id == "forget-gate-bias")
    bias = round(suggested_gate_bias(STEPS, 1e-3), 1)
    after = {e.metric: e.after for e in fix.effect}["lambda_1"]
    assert after == pytest.approx(log_sigmoid(bias), abs=1e-9)
    assert f"total gate bias {bias:.1f} in encoder" in fix.measured
