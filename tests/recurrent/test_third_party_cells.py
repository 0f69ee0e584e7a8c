"""Cells as research and library code writes them (elapsed times, masks, dict states, context
vectors, ``cell.forward(...)`` calls): found without being named, stepped with their extra
arguments held, and measured as their brute-force twin measures them (the module stepped by
PyTorch one step at a time, ``torch.autograd.functional.jacobian`` on the state)."""

from __future__ import annotations

import pytest
import torch

import gradscope
from gradscope.errors import GradscopeError
from gradscope.probe import Probe
from gradscope.views import detect_cells

from tests.helpers import reference
from tests.helpers.cell_models import (
    ConcatFirst,
    ContextDecoder,
    ContinuousTimeNet,
    CountingNet,
    DictStateNet,
    MaskedNet,
    RawCellNet,
    SharedProjection,
)
from tests.helpers.models import build
from tests.recurrent.test_custom_cell import BURN_IN, STEPS, measure

BATCH = 3
SEED = 4


def flat(state) -> torch.Tensor:
    """A state (tensor or dict of tensors) as one (B, n) row per batch element."""
    parts = state.values() if isinstance(state, dict) else [state]
    return torch.cat(list(parts), dim=-1)


def twin(model, step_at, count: int = 3, last=None):
    """What gradscope should measure, from the model's own loop: ``||dL/ds_t||`` by autograd at
    the states it computed, and spectra and QR exponents of ``jacobian(step_at(t, b, .))`` at
    the state before each step; ``step_at(t, b, s)`` steps batch element b at step t.

    A state of several tensors, one computed from another inside the cell, has its gradient
    taken by coordinates instead: ``last(s)`` is the loss as a function of one element's last
    state, and the gradient is carried back by the twin's Jacobians."""
    generator = torch.Generator().manual_seed(SEED)
    x = torch.randn(BATCH, STEPS, 4, generator=generator, dtype=torch.float64)
    out = model(x)
    loss = (out[:, -1] @ reference.unit_projection(out.shape[-1], SEED)).sum()
    nodes = [list(s.values()) if isinstance(s, dict) else [s] for s in model.states]
    grads = iter(torch.autograd.grad(loss, [t for node in nodes for t in node], allow_unused=True))
    norms = []
    for node in nodes:
        pieces = [
            (lambda g, t: torch.zeros_like(t) if g is None else g)(next(grads), t) for t in node
        ]
        norms.append(float(torch.cat(pieces, -1).pow(2).sum(-1).mean().sqrt()))
    befores = [flat(step[1]).detach() for step in model.steps]
    jacobians = [
        [
            torch.autograd.functional.jacobian(lambda s, t=t, b=b: step_at(t, b, s), befores[t][b])
            for t in range(STEPS)
        ]
        for b in range(BATCH)
    ]
    if last is not None:
        norms = chained_norms(
            jacobians,
            [
                torch.autograd.functional.jacobian(last, flat(model.states[-1])[b].detach())
                for b in range(BATCH)
            ],
        )
    rho, sigma, exponents = reference.twin_statistics(jacobians, count, BURN_IN, SEED)
    return rho, sigma, exponents, norms


def chained_norms(jacobians, last_grads) -> list[float]:
    """``||dL/ds_t||`` pooled over the batch, from ``dL/ds_T`` carried back by ``J^T``."""
    per_element = []
    for per_step, grad in zip(jacobians, last_grads, strict=True):
        grads = [grad]
        for jacobian in reversed(per_step[1:]):
            grads.insert(0, jacobian.T @ grads[0])
        per_element.append(torch.stack(grads))
    return torch.stack(per_element).pow(2).sum(-1).mean(0).sqrt().tolist()


def assert_twin(core, rho, sigma, exponents, norms) -> None:
    assert core.steps == STEPS and core.jacobian.samples == BATCH * STEPS
    assert core.jacobian.spectral_radius.median == pytest.approx(float(rho.quantile(0.5)), rel=1e-9)
    assert core.jacobian.spectral_radius.max == pytest.approx(float(rho.max()), rel=1e-9)
    assert core.jacobian.sigma_max.median == pytest.approx(float(sigma.quantile(0.5)), rel=1e-9)
    assert core.jacobian.sigma_max.max == pytest.approx(float(sigma.max()), rel=1e-9)
    assert core.lyapunov == pytest.approx(exponents, rel=1e-8, abs=1e-10)
    assert core.grad_norm == pytest.approx(norms, rel=1e-9, abs=1e-14)


def measured(model, cells=("cell",)):
    (core,) = measure(model, cells=cells, batch=BATCH, seed=SEED)
    return core


@pytest.mark.parametrize("shared", [False, True], ids=["elapsed-per-sequence", "elapsed-shared"])
def test_a_continuous_time_cell_with_elapsed_times_matches_its_twin(shared):
    model = build(lambda: ContinuousTimeNet(shared=shared), seed=1)
    core = measured(model)
    cell = model.cell

    def step_at(t, b, s):
        x_t, _, elapsed = model.steps[t]
        held = elapsed if shared else elapsed[b : b + 1]
        return cell(x_t[b : b + 1], s[None], held)[1][0]

    assert (core.cell, core.state_size, core.input_size) == ("custom", 6, 5)
    assert_twin(core, *twin(model, step_at))


def test_a_cell_with_a_dict_state_matches_its_twin():
    model = build(DictStateNet, seed=2)
    core = measured(model)

    def step_at(t, b, s):
        x_t = model.steps[t][0]
        return flat(model.cell(x_t[b : b + 1], {"h": s[None, :5], "c": s[None, 5:]}))[0]

    def last(s):
        return model.head(s[:5]) @ reference.unit_projection(2, SEED)

    assert core.state_size == 10
    assert_twin(core, *twin(model, step_at, last=last))


def test_a_cell_with_a_mask_argument_holds_the_mask_and_matches_its_twin():
    model = build(MaskedNet, seed=3)
    core = measured(model)

    def step_at(t, b, s):
        x_t, _, mask = model.steps[t]
        return model.cell(x_t[b : b + 1], s[None], mask[b : b + 1])[0]

    assert not all(bool(mask.all()) for _, _, mask in model.steps)  # some steps are held
    assert_twin(core, *twin(model, step_at))


def test_a_loop_over_a_gru_cell_with_a_context_vector_matches_its_twin():
    model = build(ContextDecoder, seed=5)
    (core,) = measure(model, batch=BATCH, seed=SEED)

    def step_at(t, b, s):
        drive = model.steps[t][0]
        return model.cell(drive[b : b + 1], s[None])[0]

    assert (core.name, core.cell, core.input_size) == ("cell", "gru", 7)
    assert_twin(core, *twin(model, step_at))


def probe_of(model) -> Probe:
    x = torch.randn(2, STEPS, 4, dtype=torch.float64)
    return Probe(inputs=x, time_axis=1, batch_axis=0, kind="gaussian", seed=0)


@pytest.mark.parametrize(
    "factory", [ContinuousTimeNet, DictStateNet, MaskedNet], ids=["elapsed", "dict", "mask"]
)
def test_cells_are_found_without_being_named(factory):
    model = build(factory)
    assert detect_cells(model, probe_of(model)) == [("cell", STEPS)]


def test_a_module_reused_on_each_step_input_is_not_a_cell():
    model = build(SharedProjection)
    assert detect_cells(model, probe_of(model)) == []
    report = gradscope.analyze(model, steps=STEPS)
    assert [core.name for core in report.recurrent] == ["gru"]


def test_a_detected_third_party_cell_is_analysed_end_to_end_with_a_note():
    model = build(ContinuousTimeNet)
    report = gradscope.analyze(model, steps=STEPS, batch=2, input_shape=(2, STEPS, 4))
    (core,) = report.recurrent
    assert (core.name, core.cell, core.steps) == ("cell", "custom", STEPS)
    notes = " ".join(report.model.notes)
    assert "detected: cell (ContinuousTimeCell), called 12 times" in notes
    assert "cell cell: state 1 tensor, 6 values in argument 1 (fed back from output[1])" in notes
    assert "argument 0 (4 per sequence), argument 2 (1 per sequence)" in notes


def test_a_python_value_that_changes_between_calls_is_refused_in_one_line():
    model = build(CountingNet)
    with pytest.raises(GradscopeError) as error:
        measure(model, cells=["cell"])
    message = str(error.value)
    assert "\n" not in message
    assert "argument 2 (0, then 1)" in message and "pass it as a tensor" in message


def test_the_probe_follows_the_model_when_its_only_module_is_a_raw_parameter_cell():
    model = build(RawCellNet)
    report = gradscope.analyze(model, steps=STEPS)
    (core,) = report.recurrent
    assert (core.name, core.cell, core.state_size, core.input_size) == ("rnn_cell", "custom", 7, 3)
    assert report.settings.input_shape == [1, STEPS, 3]
    notes = " ".join(report.model.notes)
    assert "found by trial: the probe is shaped (1, 12, 3)" in notes
    assert "detected: rnn_cell (RawCell), called 12 times" in notes


def test_a_raw_parameter_cell_called_with_a_held_float_matches_its_twin():
    model = build(lambda: RawCellNet(features=4), seed=6)
    core = measured(model, cells=("rnn_cell",))

    def step_at(t, b, s):
        return model.rnn_cell(model.steps[t][0][b : b + 1], s[None], 0.5)[1][0]

    assert_twin(core, *twin(model, step_at))


def test_the_probe_follows_the_model_past_a_cell_layer_that_reads_input_and_state():
    report = gradscope.analyze(build(ConcatFirst), steps=STEPS)
    assert report.settings.input_shape == [1, STEPS, 6]
    assert report.sequence is not None and len(report.sequence.grad_norm_by_lag) == STEPS


class DictReader(torch.nn.Module):
    """Reads a dict no probe gradscope builds can give, through raw weights."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(5, 5))

    def forward(self, x):
        return x["a"] @ self.w


def test_an_input_no_trial_runs_is_refused_naming_what_was_tried():
    with pytest.raises(GradscopeError) as error:
        gradscope.analyze(DictReader())
    message = str(error.value)
    assert "\n" not in message and "pass --input-shape" in message
    assert "inputs 5 wide were tried, as vectors and sequences: none ran" in message


def test_an_input_computed_from_the_state_before_is_said_to_be_held():
    from tests.helpers.library_models import GreedyDecoder

    report = gradscope.analyze(build(GreedyDecoder), input_shape=(2, STEPS, 4))
    notes = " ".join(report.model.notes)
    assert "decoder: what it reads at a step is computed from its state the step before" in notes
    assert "encoder: what it reads" not in notes  # its inputs come from the probe
    report = gradscope.analyze(build(ContextDecoder), steps=STEPS)
    assert "what it reads at a step" not in " ".join(report.model.notes)


@pytest.mark.parametrize("factory", [ContinuousTimeNet, lambda: RawCellNet(features=4)])
def test_the_residual_fix_fits_a_cell_called_with_extra_arguments(factory):
    from gradscope.fixes import OVER_TIME
    from gradscope.report import FixId

    model = build(factory)
    name = "cell" if isinstance(model, ContinuousTimeNet) else "rnn_cell"
    core = measured(model, cells=(name,))
    assert core.state.argument == "argument 1" and core.state.tensors == 1
    snippet = OVER_TIME[FixId.RESIDUAL_CONNECTIONS].snippet([core], 1e-3)
    original = getattr(model, name)
    exec(snippet, {"nn": torch.nn, "torch": torch, "model": model})
    wrapped = getattr(model, name)
    x, h = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 6 if name == "cell" else 7)
    h = h.double()
    extra = torch.full((2,), 0.3, dtype=torch.float64) if name == "cell" else 0.5
    before, after = original.forward(x, h, extra), wrapped.forward(x, h, extra)
    index = 1 if name == "cell" else 0
    torch.testing.assert_close(after[index], h + before[index])  # the state adds to itself
    if name == "cell":
        torch.testing.assert_close(after[0], before[0])  # the readout is the cell's own
    else:
        assert after[0] is after[1]  # (h, h): both places get the new state
