"""TorchScript files: read with --trust, the cores and the whole program as the module."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradscope

from tests.helpers.checkpoints import DictOut, SpeakerEncoder
from tests.helpers.formats import STEPS, assert_same_dynamics, one_line_error, seeded


def test_torchscript_needs_trust(tmp_path, capsys):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(SpeakerEncoder()), str(path))

    message = one_line_error(["analyze", str(path)], capsys)

    assert "TorchScript" in message and "--trust" in message


def test_torchscript_cores_and_input_gradient_match_the_module(tmp_path):
    module = seeded(SpeakerEncoder)
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(module), str(path))

    report = gradscope.analyze(path, trust=True, steps=STEPS, batch=2)
    direct = gradscope.analyze(module, steps=STEPS, batch=2)

    assert report.model.checkpoint_kind == "torchscript"
    assert report.model.class_name == "SpeakerEncoder"
    assert [c.label for c in report.recurrent] == [c.label for c in direct.recurrent]
    for got, want in zip(report.recurrent, direct.recurrent, strict=True):
        assert_same_dynamics(got, want)
    assert report.input_grad_norm == pytest.approx(direct.input_grad_norm, rel=1e-9)


def test_torchscript_keeps_the_relu_nonlinearity(tmp_path):
    module = seeded(lambda: nn.RNN(3, 5, nonlinearity="relu"))
    path = tmp_path / "relu.pt"
    torch.jit.save(torch.jit.script(module), str(path))

    report = gradscope.analyze(path, trust=True, steps=STEPS)

    assert report.recurrent[0].cell == "rnn_relu"
    assert not any("assumed" in note for note in report.model.notes)


# --- what a first review found: each a reproducer ------------------------------------------------


def test_output_key_reads_the_whole_program_not_its_rebuilt_parts(tmp_path):
    module = seeded(DictOut)
    path = tmp_path / "dict.ts"
    torch.jit.save(torch.jit.script(module), str(path))

    scripted = gradscope.analyze(path, trust=True, steps=STEPS, output_key="hidden")
    direct = gradscope.analyze(module, steps=STEPS, output_key="hidden")

    assert scripted.input_grad_norm == pytest.approx(direct.input_grad_norm, rel=1e-9)
