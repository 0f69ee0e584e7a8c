"""The analytic cases of docs/oracles.md, held to their stated tolerances."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradscope
from gradscope.numerics import spectral_radius
from gradscope.recurrent.dynamics import lyapunov_exponents

from tests.helpers.models import orthogonal, rnn_with_recurrence

LN_1000 = math.log(1000)


def analyze_at_origin(model, steps=100, **options):
    options = {"probe": "zeros", "spectrum_steps": "all"} | options
    return gradscope.analyze(model, steps=steps, **options)


@pytest.mark.parametrize("gain", [0.5, 0.9, 1.3])
def test_scaled_orthogonal_rnn_at_the_fixed_point(gain):
    n = 5
    report = analyze_at_origin(rnn_with_recurrence(gain * orthogonal(n)), exponents=n)
    (core,) = report.recurrent
    assert core.lyapunov == pytest.approx([math.log(gain)] * n, abs=1e-9)
    for stat in ("median", "max"):
        assert getattr(core.jacobian.spectral_radius, stat) == pytest.approx(gain, abs=1e-9)
        assert getattr(core.jacobian.sigma_max, stat) == pytest.approx(gain, abs=1e-9)
    ratios = [a / b for a, b in zip(core.grad_norm[:-1], core.grad_norm[1:], strict=True)]
    assert ratios == pytest.approx([gain] * (len(ratios)), abs=1e-9)
    assert core.memory_horizon == pytest.approx(LN_1000 / abs(math.log(gain)), abs=1e-9)


def test_half_gain_horizon_is_9_966_steps():
    report = analyze_at_origin(rnn_with_recurrence(0.5 * orthogonal(4)))
    assert report.recurrent[0].memory_horizon == pytest.approx(9.966, abs=1e-3)
    assert report.status == "vanishing"


def test_diagonal_recurrence_gives_each_log_eigenvalue():
    report = analyze_at_origin(
        rnn_with_recurrence(torch.diag(torch.tensor([0.9, 0.5, 0.1]))), exponents=3
    )
    assert report.recurrent[0].lyapunov == pytest.approx(
        [-0.105361, -0.693147, -2.302585], abs=1e-6
    )


def test_non_normal_recurrence_grows_then_converges_to_ln_half():
    weight = torch.tensor([[0.5, 10.0], [0.0, 0.5]], dtype=torch.float64)
    short = analyze_at_origin(rnn_with_recurrence(weight), steps=100, exponents=2)
    long = analyze_at_origin(rnn_with_recurrence(weight), steps=1000, exponents=2)
    (core,) = long.recurrent
    assert core.jacobian.spectral_radius.max == pytest.approx(0.5, abs=1e-9)
    assert core.jacobian.sigma_max.max == pytest.approx(float(torch.linalg.svdvals(weight)[0]))
    assert core.jacobian.sigma_max.max == pytest.approx(10.02, abs=0.01)
    by_lag = core.grad_norm_by_lag
    assert max(by_lag[1:4]) > 5 * by_lag[0]  # transient growth first: ||J^k|| ~ 10 k 0.5^(k-1)
    assert by_lag[200] < by_lag[0] * 1e-50  # then decay at ln 0.5 per step
    ln_half = math.log(0.5)
    short_error = max(abs(x - ln_half) for x in short.recurrent[0].lyapunov)
    long_error = max(abs(x - ln_half) for x in core.lyapunov)
    assert long_error < short_error and long_error < 0.02
    assert "transient-growth" in [f.id for f in long.findings]


def test_alternating_nilpotent_maps_have_positive_exponent_with_zero_spectral_radius():
    a = torch.tensor([[0.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[0.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    steps = 1000
    maps = torch.stack([a if t % 2 == 0 else b for t in range(steps)])

    def step(s, u):  # linear, time-varying: the drive carries the step's matrix
        return (u.reshape(*u.shape[:-1], 2, 2) @ s.unsqueeze(-1)).squeeze(-1)

    assert spectral_radius(maps[:2]).tolist() == [0.0, 0.0]
    states = torch.randn(steps, 1, 2, dtype=torch.float64)
    exponents = lyapunov_exponents(step, states, maps.reshape(steps, 1, 4), 1, 10)
    assert float(exponents[0, 0]) == pytest.approx(math.log(2), abs=5e-3)


def test_contracting_tanh_rnn_exponents_are_log_eigenvalue_moduli():
    generator = torch.Generator().manual_seed(4)
    weight = torch.randn(6, 6, generator=generator, dtype=torch.float64)
    weight *= 0.9 / torch.linalg.svdvals(weight)[0]
    report = analyze_at_origin(rnn_with_recurrence(weight), steps=1000, exponents=6)
    expected = sorted(torch.linalg.eigvals(weight).abs().log().tolist(), reverse=True)
    assert report.recurrent[0].lyapunov == pytest.approx(expected, abs=5e-3)


def test_two_layer_rnn_layers_have_their_own_rates():
    n = 4
    rnn = nn.RNN(n, n, num_layers=2).double()
    with torch.no_grad():
        for parameter in rnn.parameters():
            parameter.zero_()
        rnn.weight_hh_l0.copy_(0.5 * orthogonal(n, seed=1))
        rnn.weight_hh_l1.copy_(0.8 * orthogonal(n, seed=2))
    report = analyze_at_origin(rnn, exponents=n)
    layer0, layer1 = report.recurrent
    assert layer0.lyapunov == pytest.approx([math.log(0.5)] * n, abs=1e-6)
    assert layer1.lyapunov == pytest.approx([math.log(0.8)] * n, abs=1e-6)


class KickedRNN(nn.Module):
    """A tanh RNN without input, started from a seeded random state (the origin is unstable)."""

    def __init__(self, n: int, gain: float) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(11)
        self.rnn = rnn_with_recurrence(
            gain * torch.randn(n, n, generator=generator, dtype=torch.float64) / n**0.5
        )
        self.register_buffer(
            "start", torch.randn(1, 1, n, generator=generator, dtype=torch.float64)
        )

    def forward(self, x):
        return self.rnn(x, self.start.expand(1, x.shape[1], -1).contiguous())[0]


def test_chaotic_random_network_matches_mean_field_exponent():
    report = gradscope.analyze(
        KickedRNN(256, 3.0), steps=1200, burn_in=200, exponents=1, probe="zeros"
    )
    (core,) = report.recurrent
    assert core.top_exponent == pytest.approx(0.310, abs=0.03)
    assert report.status == "exploding"


class ZeroLSTM(nn.Module):
    def __init__(self, hidden: int, forget_bias: float) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, hidden).double()
        with torch.no_grad():
            for parameter in self.lstm.parameters():
                parameter.zero_()
            self.lstm.bias_ih_l0[hidden : 2 * hidden].fill_(forget_bias / 2)
            self.lstm.bias_hh_l0[hidden : 2 * hidden].fill_(forget_bias / 2)

    def forward(self, x):
        return self.lstm(x)[0]


@pytest.mark.parametrize(
    ("bias", "exponent", "horizon"),
    [(0.0, -0.693147, 9.97), (1.0, -0.313262, 22.05), (2.0, -0.126928, 54.42)],
)
def test_zero_lstm_forget_gate_sets_the_horizon(bias, exponent, horizon):
    hidden = 4
    report = gradscope.analyze(ZeroLSTM(hidden, bias), steps=60, exponents=2 * hidden)
    (core,) = report.recurrent
    expected = math.log(1 / (1 + math.exp(-bias)))
    assert core.lyapunov[:hidden] == pytest.approx([expected] * hidden, abs=1e-9)
    assert expected == pytest.approx(exponent, abs=1e-6)
    assert core.lyapunov[hidden:] == [-math.inf] * hidden
    assert core.memory_horizon == pytest.approx(horizon, abs=0.01)
    assert core.gates.mean == pytest.approx(1 / (1 + math.exp(-bias)))
    assert core.gates.bias_mean == pytest.approx(bias)
    assert report.to_dict()["recurrent"][0]["lyapunov"][hidden:] == [None] * hidden


def test_zero_gru_update_gate_sets_the_rate():
    gru = nn.GRU(3, 4).double()
    with torch.no_grad():
        for parameter in gru.parameters():
            parameter.zero_()
        gru.bias_ih_l0[4:8].fill_(1.0)  # gate order r, z, n: z is chunk 1
    report = gradscope.analyze(gru, steps=50, exponents=4)
    assert report.recurrent[0].lyapunov == pytest.approx([-0.313262] * 4, abs=1e-6)
    assert report.recurrent[0].lyapunov[0] == pytest.approx(
        math.log(1 / (1 + math.exp(-1))), abs=1e-9
    )
