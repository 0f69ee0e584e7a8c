"""What a new user meets first on recurrent code gradscope has not seen: loops over the first
axis, probes given as they stand, cells whose state other modules change, embeddings called
per step, buffers filled step by step, models that run in float32 only."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

import gradscope
from gradscope.errors import GradscopeError

from tests.helpers.cell_models import (
    BufferLoop,
    CharRNN,
    ConcatFirst,
    MixedMemory,
    SingleOnly,
    TimeMajorLoop,
)
from tests.helpers.library_models import LoopedCellStack
from tests.helpers.models import build

STEPS = 12


def test_a_loop_over_the_first_axis_is_found_time_major():
    report = gradscope.analyze(build(TimeMajorLoop), steps=STEPS)
    (core,) = report.recurrent
    assert (core.name, core.steps) == ("rnn", STEPS)
    assert report.settings.input_shape == [STEPS, 1, 10]
    assert any("loops over the first axis of its input" in n for n in report.model.notes)


def test_a_probe_is_the_input_as_it_stands():
    x = torch.randn(2, STEPS, 6, dtype=torch.float64)
    report = gradscope.analyze(build(ConcatFirst), probe=x)
    assert report.settings.input_shape == [2, STEPS, 6]
    assert len(report.sequence.grad_norm_by_lag) == STEPS
    assert any("is used as it stands" in n for n in report.model.notes)


def test_a_cell_whose_state_another_module_changes_is_stepped_when_named():
    model = build(MixedMemory)
    report = gradscope.analyze(model, steps=STEPS, batch=2, cells=["cell"])
    (core,) = report.recurrent
    assert core.state.output == "output[1]"  # (output, state): the state comes last
    assert not core.state.observed
    notes = " ".join(report.model.notes)
    assert "cell: the state it is given at a step is not the one it returned" in notes


def test_a_cell_that_runs_once_is_refused_in_one_line():
    with pytest.raises(GradscopeError, match=r"^--cell block ran once on the probe"):
        gradscope.analyze(build(LoopedCellStack), input_shape=(2, STEPS, 4), cells=["block"])


def test_an_embedding_called_step_by_step_gives_the_input_gradient():
    report = gradscope.analyze(build(CharRNN), steps=STEPS, batch=2)
    assert len(report.input_grad_norm) == STEPS and report.sequence is not None
    assert report.sequence.grad_norm_by_lag == report.input_grad_norm[::-1]
    assert not any("not measured" in n for n in report.model.notes)


def test_a_loop_writing_into_a_buffer_is_a_recurrence():
    report = gradscope.analyze(build(BufferLoop), input_shape=(2, STEPS, 8))
    (group,) = report.coverage.unmeasured_recurrence
    assert "loops over time steps" in group.reason and report.fails()


def test_a_parametrized_convolution_first_is_named_by_its_kind():
    model = nn.Sequential(weight_norm(nn.Conv1d(4, 8, 40)), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(GradscopeError, match=r"ParametrizedConv1d, 4 input channels.*B,4,L"):
        gradscope.analyze(model.double(), steps=STEPS)


def test_a_model_that_runs_in_float32_only_says_so():
    with pytest.raises(GradscopeError, match=r"in float32 only.*rerun with --dtype float32"):
        gradscope.analyze(build(SingleOnly), steps=STEPS)
    report = gradscope.analyze(build(SingleOnly).float(), steps=STEPS, dtype="float32")
    assert [core.name for core in report.recurrent] == ["cell"]


def test_inputs_built_from_shapes_beside_the_main_one_are_said_to_be_noise():
    class WithTimes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(4, 6, batch_first=True)

        def forward(self, x, elapsed):
            return self.gru(x * elapsed[..., None])[0]

    report = gradscope.analyze(build(WithTimes), input_shape=["x=2,12,4", "elapsed=2,12"])
    assert any("elapsed is N(0, 1) noise" in n for n in report.model.notes)
