"""Every recurrent measurement against its brute-force twin (PyTorch's own module, per step)."""

from __future__ import annotations

import pytest
import torch

import gradscope
from gradscope.recurrent.unroll import unrolled

from tests.helpers import reference
from tests.helpers.models import CELLS, MODULES, CellLoop, build

STEPS = 12


def probe_for(module, steps=STEPS, batch=1, seed=0):
    """gradscope's gaussian probe for a bare module, time-major (as the reference wants)."""
    shape = (
        (batch, steps, module.input_size)
        if module.batch_first
        else (steps, batch, module.input_size)
    )
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    return x.transpose(0, 1) if module.batch_first else x


@pytest.mark.parametrize("name", MODULES)
def test_unroll_reproduces_the_module(name):
    module = build(MODULES[name])
    x = torch.randn(3, 7, 4, dtype=torch.float64)
    h0 = None
    expected = module(x)
    with unrolled(module):
        actual = module(x, h0)
    torch.testing.assert_close(actual[0], expected[0], atol=1e-12, rtol=1e-12)
    flat = lambda s: s if isinstance(s, tuple) else (s,)  # noqa: E731
    for a, e in zip(flat(actual[1]), flat(expected[1]), strict=True):
        torch.testing.assert_close(a, e, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("name", ["lstm_proj_bidir_2layer_bf", "gru", "rnn_tanh"])
def test_unroll_with_initial_state_unbatched_and_packed(name):
    module = build(MODULES[name])
    directions = 2 if module.bidirectional else 1
    out = (
        module.proj_size or module.hidden_size
        if hasattr(module, "proj_size")
        else module.hidden_size
    )
    layers = module.num_layers * directions
    h0 = torch.randn(layers, 3, out, dtype=torch.float64)
    hx = (
        (h0, torch.randn(layers, 3, module.hidden_size, dtype=torch.float64))
        if isinstance(module, torch.nn.LSTM)
        else h0
    )
    x = torch.randn(3, 7, 4, dtype=torch.float64)
    if not module.batch_first:
        x = x.transpose(0, 1)
    unbatched = x[:, 0] if not module.batch_first else x[0]
    hx_unbatched = tuple(h[:, 0] for h in hx) if isinstance(hx, tuple) else hx[:, 0]
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        x, torch.tensor([7, 7, 7]), batch_first=module.batch_first
    )
    expected = [module(x, hx), module(unbatched, hx_unbatched), module(packed)]
    with unrolled(module):
        actual = [module(x, hx), module(unbatched, hx_unbatched), module(packed)]
    torch.testing.assert_close(actual[0], expected[0], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(actual[1], expected[1], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(actual[2][0].data, expected[2][0].data, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("name", CELLS)
def test_unrolled_cells_reproduce_the_cells(name):
    model = CellLoop(build(CELLS[name]))
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    expected = model(x)
    with unrolled(model) as recorder:
        actual = model(x)
    torch.testing.assert_close(actual, expected, atol=1e-12, rtol=1e-12)
    assert [trace.steps for trace in recorder.traces.values()] == [5]


def core_of(report, layer, direction):
    return next(c for c in report.recurrent if (c.layer, c.direction) == (layer, direction))


@pytest.mark.parametrize("name", MODULES)
def test_spectra_and_lyapunov_match_the_reference(name):
    module = build(MODULES[name])
    report = gradscope.analyze(
        module, steps=STEPS, exponents=3, burn_in=2, spectrum_steps="all", seed=3
    )
    x = probe_for(module, seed=3)
    directions = 2 if module.bidirectional else 1
    assert len(report.recurrent) == module.num_layers * directions
    for layer in range(module.num_layers):
        inputs = reference.layer_input(module, x, layer).detach()
        for d in range(directions):
            cell = reference.single_layer(module, layer, reverse=d == 1)
            steps = reference.trajectory(cell, inputs, reverse=d == 1)
            jacobians = reference.jacobians(cell, steps)
            core = core_of(report, layer, "reverse" if d else "forward")
            rho = torch.tensor(
                [reference.spectral_radius(j) for j in jacobians], dtype=torch.float64
            )
            sigma = torch.tensor([reference.sigma_max(j) for j in jacobians], dtype=torch.float64)
            assert core.jacobian.samples == STEPS
            assert core.jacobian.spectral_radius.median == pytest.approx(
                float(rho.quantile(0.5)), rel=1e-9
            )
            assert core.jacobian.spectral_radius.max == pytest.approx(float(rho.max()), rel=1e-9)
            assert core.jacobian.sigma_max.median == pytest.approx(
                float(sigma.quantile(0.5)), rel=1e-9
            )
            assert core.jacobian.sigma_max.max == pytest.approx(float(sigma.max()), rel=1e-9)
            expected = reference.qr_lyapunov(jacobians, 3, burn_in=2, seed=3)
            assert core.lyapunov == pytest.approx(expected, rel=1e-8, abs=1e-10)


@pytest.mark.parametrize("name", MODULES)
def test_gradient_norms_match_the_reference(name):
    module = build(MODULES[name])
    report = gradscope.analyze(module, steps=STEPS, batch=2, seed=5, exponents=1)
    x = probe_for(module, batch=2, seed=5)
    expected = reference.stacked_state_gradients(module, x, seed=5)
    for (layer, d), norms in expected.items():
        core = core_of(report, layer, "reverse" if d else "forward")
        assert core.steps == STEPS
        assert core.grad_norm == pytest.approx(norms, rel=1e-9, abs=1e-14)


@pytest.mark.parametrize("name", CELLS)
def test_cells_match_the_reference(name):
    cell = build(CELLS[name])
    report = gradscope.analyze(
        CellLoop(cell), steps=STEPS, exponents=2, burn_in=2, spectrum_steps="all", seed=1
    )
    (core,) = report.recurrent
    assert core.is_cell and core.steps == STEPS
    x = probe_for(torch.nn.RNN(4, 1, batch_first=True), seed=1)
    steps = reference.trajectory(cell, x)
    jacobians = reference.jacobians(cell, steps)
    assert core.lyapunov == pytest.approx(reference.qr_lyapunov(jacobians, 2, 2, 1), rel=1e-8)
    rho = torch.tensor([reference.spectral_radius(j) for j in jacobians], dtype=torch.float64)
    assert core.jacobian.spectral_radius.max == pytest.approx(float(rho.max()), rel=1e-9)


def test_input_gradient_matches_autograd_on_the_real_module():
    module = build(MODULES["gru_bidir_2layer_bf"])
    report = gradscope.analyze(module, steps=STEPS, batch=2, seed=7, exponents=1)
    x = probe_for(module, batch=2, seed=7).transpose(0, 1).clone().requires_grad_(True)
    output = module(x)[0][:, -1]
    loss = (output @ reference.unit_projection(output.shape[-1], 7)).sum()
    (grad,) = torch.autograd.grad(loss, x)
    expected = grad.transpose(0, 1).pow(2).sum(-1).mean(-1).sqrt().tolist()
    assert report.input_grad_norm == pytest.approx(expected, rel=1e-9)


def test_batch_statistics_pool_every_element():
    module = build(MODULES["lstm"])
    pooled = gradscope.analyze(module, steps=STEPS, batch=3, seed=2, exponents=2, burn_in=2)
    x = probe_for(module, batch=3, seed=2)
    cell = reference.single_layer(module, 0, reverse=False)
    per_element = []
    for b in range(3):
        steps = reference.trajectory(cell, x[:, b : b + 1])
        per_element.append(reference.qr_lyapunov(reference.jacobians(cell, steps), 2, 2, 2))
    expected = torch.tensor(per_element, dtype=torch.float64).mean(0).tolist()
    (core,) = pooled.recurrent
    assert core.lyapunov == pytest.approx(expected, rel=1e-8)
    assert core.jacobian.samples == 3 * STEPS


def test_a_top_reverse_direction_the_loss_reaches_only_at_the_last_step_is_said_so():
    module = build(MODULES["gru_bidir_2layer_bf"])
    report = gradscope.analyze(module, steps=STEPS, batch=2, seed=7, exponents=1)
    x = probe_for(module, batch=2, seed=7)
    expected = reference.stacked_state_gradients(module, x, seed=7)
    top = max(layer for layer, _ in expected)
    # autograd on the real module: the loss reads the top reverse direction at the last step alone
    assert expected[(top, 1)][-1] > 0 and all(v == 0 for v in expected[(top, 1)][:-1])
    said = [note for note in report.model.notes if "exactly 0 before the last step" in note]
    assert len(said) == 1
    assert said[0].startswith(core_of(report, top, "reverse").label + ":")
    assert "a reverse direction starts at the last step" in said[0]
