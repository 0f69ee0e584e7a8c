"""Arbitrary models' inputs and outputs: --output-key, and the shape a conv front end needs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradscope
from gradscope.errors import GradscopeError

from tests.helpers.checkpoints import ConvFrontEnd, ObjectOutput, Tagger
from tests.helpers.formats import STEPS, one_line_error, seeded


def test_output_key_picks_the_tensor_the_loss_reads():
    model = seeded(Tagger)
    default = gradscope.analyze(model, steps=STEPS)
    logits = gradscope.analyze(model, steps=STEPS, output_key="logits")
    features = gradscope.analyze(model, steps=STEPS, output_key="features")

    assert default.settings.input_shape == [1, STEPS]  # token ids, batch-first
    assert default.recurrent[0].grad_norm == logits.recurrent[0].grad_norm
    assert features.recurrent[0].grad_norm != logits.recurrent[0].grad_norm


def test_output_key_on_tuples_and_objects():
    tupled = seeded(lambda: nn.GRU(3, 5))
    by_index = gradscope.analyze(tupled, steps=STEPS, output_key="1")  # h_n, not the outputs
    assert by_index.recurrent[0].grad_norm[-1] > 0

    objects = seeded(ObjectOutput)
    default = gradscope.analyze(objects, steps=STEPS)
    hidden = gradscope.analyze(objects, steps=STEPS, output_key="hidden")
    assert default.recurrent[0].grad_norm != hidden.recurrent[0].grad_norm


def test_an_output_key_that_is_not_there_lists_what_is(capsys):
    with pytest.raises(GradscopeError, match=r"'scores'.*mask, features, logits"):
        gradscope.analyze(seeded(Tagger), steps=STEPS, output_key="scores")


def test_a_convolutional_front_end_is_probed_channels_first():
    model = seeded(ConvFrontEnd)
    found = gradscope.analyze(model, steps=STEPS)
    assert found.settings.input_shape == [1, 4, STEPS]  # found by trial, channels first
    assert any("found by trial" in note for note in found.model.notes)

    report = gradscope.analyze(model, input_shape=(2, 4, STEPS))

    assert report.recurrent[0].steps == STEPS
    assert len(report.input_grad_norm) == STEPS  # time is the last axis of a Conv1d input


def test_a_convolutional_front_end_no_trial_runs_needs_the_input_shape():
    model = nn.Sequential(nn.Conv1d(4, 8, 40), nn.Flatten(), nn.Linear(8, 2)).double()
    with pytest.raises(GradscopeError, match=r"Conv1d, 4 input channels.*--input-shape B,4,L"):
        gradscope.analyze(model, steps=STEPS)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--nonlinearity", "sigmoid"], "--nonlinearity"),
        (["--output-key", "nope"], "--output-key"),
    ],
)
def test_bad_loading_and_output_flags_are_one_line_errors(tmp_path, capsys, args, expected):
    path = tmp_path / "gru.pt"
    torch.save(nn.GRU(3, 4), path)

    message = one_line_error(["analyze", str(path), "--steps", "8", *args], capsys)

    assert expected in message
