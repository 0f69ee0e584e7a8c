"""torch.export programs (.pt2): read with --trust, probed from their example inputs."""

from __future__ import annotations

import pytest
import torch

import gradscope

from tests.helpers.checkpoints import SpeakerEncoder
from tests.helpers.formats import assert_same_dynamics, one_line_error, seeded


def test_exported_program_needs_trust(tmp_path, capsys):
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(SpeakerEncoder(), (torch.randn(2, 5, 12),)), str(path))

    message = one_line_error(["analyze", str(path)], capsys)

    assert "exported program" in message and "--trust" in message


def test_exported_program_probe_comes_from_its_example_inputs(tmp_path):
    module = seeded(SpeakerEncoder).eval()
    example = torch.randn(3, 9, 12)
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(module, (example,)), str(path))

    report = gradscope.analyze(path, trust=True)
    direct = gradscope.analyze(module, dtype="float32", input_shape=(3, 9, 12))

    assert report.model.checkpoint_kind == "exported-program"
    assert report.settings.input_shape == [3, 9, 12]
    assert [c.steps for c in report.recurrent] == [9, 9, 9]
    assert report.input_grad_norm == pytest.approx(direct.input_grad_norm, rel=1e-4)
    for got, want in zip(
        report.recurrent, gradscope.analyze(module, steps=9, batch=3).recurrent, strict=True
    ):
        assert_same_dynamics(got, want)


# --- what a first review found: each a reproducer ------------------------------------------------


def test_an_exported_program_cores_follow_steps_when_given(tmp_path):
    module = seeded(SpeakerEncoder).eval()
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(module, (torch.randn(2, 7, 12),)), str(path))

    report = gradscope.analyze(path, trust=True, steps=30)
    shaped = gradscope.analyze(path, trust=True, input_shape=(2, 7, 12))

    assert [c.steps for c in report.recurrent] == [30, 30, 30]
    assert len(report.input_grad_norm) == 7
    assert any("example" not in n and "(2, 7, 12)" in n for n in report.model.notes)
    assert len(shaped.input_grad_norm) == 7
    assert not any("not measured" in note for note in shaped.model.notes)
