"""Custom cells (``--cell``): the same numbers as the built-in cell they reimplement, and as a
brute-force twin on the module's own forward for a cell no built-in expresses."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from gradscope.errors import GradscopeError
from gradscope.options import AnalysisOptions
from gradscope.probe import Probe
from gradscope.recurrent.measure import measure_recurrent
from gradscope.recurrent.unroll import unrolled

from tests.helpers import reference
from tests.helpers.models import CellLoop, GatedNormCell, PairLSTMCell, StateLoop, TanhCell, build

STEPS = 12
BURN_IN = 2


def measure(model, cells=(), batch=2, seed=0, exponents=3, unbatched=False):
    """Every core gradscope measures on a seeded gaussian probe, batch-first or unbatched."""
    generator = torch.Generator().manual_seed(seed)
    shape = (STEPS, 4) if unbatched else (batch, STEPS, 4)
    x = torch.randn(shape, generator=generator, dtype=torch.float64).requires_grad_(True)
    probe = Probe(
        inputs=x,
        time_axis=0 if unbatched else 1,
        batch_axis=None if unbatched else 0,
        kind="gaussian",
        seed=seed,
    )
    settings = AnalysisOptions(
        steps=STEPS,
        batch=1 if unbatched else batch,
        seed=seed,
        burn_in=BURN_IN,
        exponents=exponents,
        spectrum_steps="all",
        cells=tuple(cells),
    )
    return measure_recurrent(model, probe, settings).cores


def assert_same_measurements(actual, expected):
    """Gradient norms, spectra and Lyapunov exponents agree to ~1e-9."""
    assert actual.steps == expected.steps == STEPS
    assert actual.grad_norm == pytest.approx(expected.grad_norm, rel=1e-9, abs=1e-14)
    assert actual.lyapunov == pytest.approx(expected.lyapunov, rel=1e-9, abs=1e-12)
    assert actual.jacobian.samples == expected.jacobian.samples
    for quantity in ("spectral_radius", "sigma_max"):
        for statistic in ("median", "max"):
            assert getattr(getattr(actual.jacobian, quantity), statistic) == pytest.approx(
                getattr(getattr(expected.jacobian, quantity), statistic), rel=1e-9
            )


def test_a_custom_tanh_cell_measures_like_the_rnn_cell_it_reimplements():
    builtin = build(lambda: nn.RNNCell(4, 6))
    custom = TanhCell(4, 6).double().load_from(builtin)
    (expected,) = measure(CellLoop(builtin))
    (actual,) = measure(CellLoop(custom), cells=["cell"])
    assert (actual.name, actual.cell, actual.is_cell) == ("cell", "custom", True)
    assert (actual.input_size, actual.hidden_size, actual.state_size) == (4, 6, 6)
    assert actual.gates is None and actual.weights is None
    assert_same_measurements(actual, expected)


def test_a_custom_tuple_state_cell_measures_like_the_lstm_cell_on_h_then_c():
    builtin = build(lambda: nn.LSTMCell(4, 6))
    custom = PairLSTMCell(4, 6).double().load_from(builtin)
    (expected,) = measure(CellLoop(builtin), exponents=5)
    (actual,) = measure(CellLoop(custom), cells=["cell"], exponents=5)
    assert (actual.cell, actual.input_size, actual.state_size) == ("custom", 4, 12)
    assert_same_measurements(actual, expected)


class WrappedGRUCell(nn.Module):
    """A custom cell around a built-in one: the inner cell is part of its map."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.GRUCell(4, 6)

    def forward(self, x, h=None):
        return self.inner(x, h)


def test_a_builtin_cell_inside_a_custom_cell_is_measured_once_as_part_of_it():
    custom = build(WrappedGRUCell)
    (expected,) = measure(CellLoop(custom.inner))
    (actual,) = measure(CellLoop(custom), cells=["cell"])
    assert (actual.name, actual.cell) == ("cell", "custom")
    assert_same_measurements(actual, expected)


def brute_force(cell, x, count, seed):
    """Spectra, QR exponents and ``||dL/ds_t||`` from the module's own forward, step by step.

    ``x`` is (B, T, F); the loss is gradscope's: <w, h at the last step>, summed over the batch.
    """
    batch, steps, _ = x.shape
    h = x.new_zeros(batch, cell.recurrent.in_features)
    states, nodes = [], []
    for t in range(steps):
        states.append(h.detach())
        h = cell(x[:, t], h)
        h.retain_grad()
        nodes.append(h)
    (h @ reference.unit_projection(h.shape[-1], seed)).sum().backward()
    norms = [float(node.grad.pow(2).sum(-1).mean().sqrt()) for node in nodes]
    jacobians = [
        [
            torch.autograd.functional.jacobian(
                lambda s, b=b, t=t: cell(x[b : b + 1, t], s[None])[0], states[t][b]
            )
            for t in range(steps)
        ]
        for b in range(batch)
    ]
    rho, sigma, exponents = reference.twin_statistics(jacobians, count, BURN_IN, seed)
    return rho, sigma, exponents, norms


@pytest.mark.parametrize("keyword", [False, True], ids=["positional", "keyword"])
def test_a_cell_no_builtin_expresses_matches_its_brute_force_twin(keyword):
    torch.manual_seed(0)
    cell = GatedNormCell(4, 6).double()
    (core,) = measure(StateLoop(cell, 6, keyword=keyword), cells=["cell"], seed=4)
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(2, STEPS, 4, generator=generator, dtype=torch.float64)
    rho, sigma, exponents, norms = brute_force(cell, x, count=3, seed=4)
    assert core.jacobian.samples == 2 * STEPS
    assert core.jacobian.spectral_radius.median == pytest.approx(float(rho.quantile(0.5)), rel=1e-9)
    assert core.jacobian.spectral_radius.max == pytest.approx(float(rho.max()), rel=1e-9)
    assert core.jacobian.sigma_max.median == pytest.approx(float(sigma.quantile(0.5)), rel=1e-9)
    assert core.jacobian.sigma_max.max == pytest.approx(float(sigma.max()), rel=1e-9)
    assert core.lyapunov == pytest.approx(exponents, rel=1e-8, abs=1e-10)
    assert core.grad_norm == pytest.approx(norms, rel=1e-9, abs=1e-14)


def test_an_unbatched_cell_measures_like_the_same_cell_on_a_batch_of_one():
    torch.manual_seed(0)
    cell = GatedNormCell(4, 6).double()
    (actual,) = measure(StateLoop(cell, 6, unbatched=True), cells=["cell"], unbatched=True)
    (expected,) = measure(StateLoop(cell, 6), cells=["cell"], batch=1)
    assert actual.state_size == 6
    assert_same_measurements(actual, expected)


def test_the_unrolled_cell_returns_what_the_cell_returns_and_records_h_then_c():
    builtin = build(lambda: nn.LSTMCell(4, 6))
    model = CellLoop(PairLSTMCell(4, 6).double().load_from(builtin))
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    expected = model(x)
    with unrolled(model, ["cell"]) as recorder:
        actual = model(x)
    torch.testing.assert_close(actual, expected, atol=0, rtol=0)
    (trace,) = recorder.traces.values()
    assert trace.steps == 5
    states, drives = trace.trajectory()
    assert states.shape == (5, 2, 12) and drives.shape == (5, 2, 4)
    assert bool((states[0] == 0).all())  # no state given: the cell starts from zeros
    torch.testing.assert_close(drives, x.transpose(0, 1), atol=0, rtol=0)
    builtin_model = CellLoop(builtin)
    with unrolled(builtin_model) as builtin_recorder:
        builtin_model(x)
    (builtin_trace,) = builtin_recorder.traces.values()
    torch.testing.assert_close(states, builtin_trace.trajectory()[0], atol=1e-12, rtol=1e-12)


def test_an_unknown_cell_name_is_refused_with_the_module_names():
    model = CellLoop(TanhCell(4, 6).double())
    with pytest.raises(GradscopeError) as error, unrolled(model, ["cel"]):
        pass
    message = str(error.value)
    assert "\n" not in message
    assert "--cell cel" in message and "did you mean cell?" in message
    assert "cell, cell.input, cell.recurrent" in message


def test_a_builtin_named_as_a_cell_is_refused():
    model = CellLoop(nn.GRUCell(4, 6).double())
    message = r"^--cell cell is a GRUCell.*drop the option$"
    with pytest.raises(GradscopeError, match=message), unrolled(model, ["cell"]):
        pass


def test_one_module_named_twice_is_refused():
    model = CellLoop(TanhCell(4, 6).double())
    model.alias = model.cell
    message = r"^--cell cell and --cell alias are one module: name it once$"
    with pytest.raises(GradscopeError, match=message), unrolled(model, ["cell", "alias"]):
        pass


class SignCell(nn.Module):
    """A cell whose forward returns booleans: not a state gradscope can step."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 6)

    def forward(self, x, h=None):
        return self.linear(x) > 0


class ShrinkingCell(TanhCell):
    """A cell whose output is not shaped like its state."""

    def forward(self, x, h=None):
        return super().forward(x, h)[:, :3]


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        (
            SignCell,
            r"^--cell cell: its output is a torch.bool tensor, not a state; .*tuple/list/dict "
            "of them$",
        ),
        (
            lambda: ShrinkingCell(4, 6),
            r"^--cell cell maps a state shaped \[\(6,\)\] to one shaped \[\(3,\)\]",
        ),
    ],
)
def test_a_cell_that_does_not_return_its_next_state_is_refused_on_one_line(cell, message):
    model = StateLoop(build(cell), 6)
    with pytest.raises(GradscopeError, match=message) as error:
        measure(model, cells=["cell"])
    assert "\n" not in str(error.value)


def test_a_named_cell_the_model_never_calls_is_refused():
    model = CellLoop(build(lambda: nn.RNNCell(4, 6)))
    model.spare = TanhCell(4, 6).double()
    with pytest.raises(GradscopeError, match=r"^--cell spare never ran on the probe"):
        measure(model, cells=["spare"])


def test_cells_are_restored_after_the_context_even_on_error():
    model = StateLoop(build(SignCell), 6)
    cell, x = model.cell, torch.randn(2, 5, 4, dtype=torch.float64)
    class_forward, builtin_forward = type(cell).forward, nn.RNNCell.forward
    with unrolled(model, ["cell"]):
        assert "forward" in vars(cell)
    assert "forward" not in vars(cell) and type(cell).forward is class_forward
    with pytest.raises(GradscopeError), unrolled(model, ["cell"]):
        model(x)
    assert "forward" not in vars(cell) and type(cell).forward is class_forward
    assert nn.RNNCell.forward is builtin_forward

    own = functools.partial(type(cell).forward, cell)
    cell.forward = own  # an instance-level forward of the user's own
    with pytest.raises(RuntimeError), unrolled(model, ["cell"]):
        assert cell.forward is not own
        raise RuntimeError
    assert vars(cell)["forward"] is own


# --- end to end: analyze and the command line -----------------------------------------------


def test_a_model_with_only_a_custom_cell_is_analysed_end_to_end():
    import gradscope

    model = build(lambda: StateLoop(GatedNormCell(4, 5), 5))

    report = gradscope.analyze(model, cells=["cell"], steps=STEPS, batch=2, burn_in=BURN_IN)

    (core,) = report.recurrent
    assert (core.name, core.cell, core.steps, core.input_size) == ("cell", "custom", STEPS, 4)
    assert report.settings.input_shape == [2, STEPS, 4]  # from the cell's first Linear
    assert_same_measurements(core, measure(model, cells=["cell"], exponents=8)[0])
    assert len(report.input_grad_norm) == STEPS


def test_without_cell_a_model_of_custom_cells_is_found_and_stepped():
    import gradscope

    model = build(lambda: StateLoop(GatedNormCell(4, 5), 5))
    report = gradscope.analyze(model, steps=STEPS, batch=2, burn_in=BURN_IN)
    (core,) = report.recurrent
    assert (core.name, core.cell) == ("cell", "custom")
    assert_same_measurements(core, measure(model, cells=["cell"], exponents=8)[0])


def test_without_detection_a_model_of_custom_cells_is_an_unmeasured_recurrence_naming_the_flag():
    import gradscope

    model = build(lambda: StateLoop(GatedNormCell(4, 5), 5))
    report = gradscope.analyze(model, steps=STEPS, detect_cells=False)
    assert report.recurrent == [] and report.fails()
    (group,) = report.coverage.unmeasured_recurrence
    assert "--cell cell" in group.reason


def test_cell_through_the_command_line(tmp_path, capsys):
    import json

    from gradscope.cli import main

    path = tmp_path / "loop.pt"
    torch.save(build(lambda: StateLoop(TanhCell(4, 5), 5)), path)

    code = main(["analyze", str(path), "--trust", "--cell", "cell", "--steps", "10", "-f", "json"])

    report = json.loads(capsys.readouterr().out)
    assert code in (0, 1)
    assert [(c["name"], c["cell"]) for c in report["recurrent"]] == [("cell", "custom")]
    assert report["settings"]["cells"] == ["cell"]


class ConcatCell(nn.Module):
    """A cell whose one Linear reads cat(x, h): its in_features is not the model's input size."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.both = nn.Linear(input_size + hidden_size, hidden_size)

    def forward(self, x, h):
        return torch.tanh(self.both(torch.cat((x, h), dim=-1)))


class ProjectedLoop(nn.Module):
    """The cell is registered first; the input projection that really reads x comes after."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = ConcatCell(6, 5)
        self.project = nn.Linear(4, 6)

    def forward(self, x):
        h, outputs = x.new_zeros(x.shape[0], 5), []
        for x_t in self.project(x).unbind(1):
            h = self.cell(x_t, h)
            outputs.append(h)
        return torch.stack(outputs, 1)


def test_the_input_size_is_read_outside_the_custom_cell_first():
    import gradscope

    report = gradscope.analyze(build(ProjectedLoop), cells=["cell"], steps=STEPS)

    assert report.settings.input_shape == [1, STEPS, 4]
    assert report.recurrent[0].cell == "custom"
