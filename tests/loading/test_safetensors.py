"""safetensors files: inferred, named by metadata (imported only with --trust), damaged."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import gradscope
from gradscope.loading import load_model
from gradscope.options import LoadOptions

from tests.helpers.checkpoints import SpeakerEncoder
from tests.helpers.formats import STEPS, assert_same_dynamics, one_line_error, seeded


def test_safetensors_without_a_class_is_inferred(tmp_path):
    module = seeded(lambda: nn.GRU(3, 4, 2))
    path = tmp_path / "model.safetensors"
    save_file(module.state_dict(), str(path), metadata={"format": "pt"})

    report = gradscope.analyze(path, steps=STEPS)

    assert report.model.checkpoint_kind == "safetensors"
    for got, want in zip(
        report.recurrent, gradscope.analyze(module, steps=STEPS).recurrent, strict=True
    ):
        assert_same_dynamics(got, want)


def test_safetensors_metadata_names_the_class_but_only_trust_imports_it(tmp_path):
    module = seeded(lambda: SpeakerEncoder(n_mels=7, hidden=6))
    path = tmp_path / "encoder.safetensors"
    metadata = {
        "model_class": "tests.helpers.checkpoints:SpeakerEncoder",
        "model_args": '{"n_mels": 7, "hidden": 6}',
    }
    save_file(module.state_dict(), str(path), metadata=metadata)

    untrusted = gradscope.analyze(path, steps=STEPS)
    trusted = gradscope.analyze(path, steps=STEPS, trust=True)
    named = gradscope.analyze(path, steps=STEPS, model="tests.helpers.checkpoints:SpeakerEncoder")

    assert untrusted.model.architecture == "inferred from weights"
    assert any(
        "--model tests.helpers.checkpoints:SpeakerEncoder" in n for n in untrusted.model.notes
    )
    direct = gradscope.analyze(module, steps=STEPS)
    for report in (trusted, named):  # the metadata's arguments build it either way
        assert report.model.class_name == "SpeakerEncoder"
        assert report.input_grad_norm == pytest.approx(direct.input_grad_norm, rel=1e-9)


@pytest.mark.parametrize("value", ["v1.5", "gpt2.small", "./evil.py:Net", "this:Net"])
def test_metadata_that_is_not_a_class_spec_or_untrusted_runs_nothing(tmp_path, value, capsys):
    (tmp_path / "evil.py").write_text(f"open({str(tmp_path / 'MARKER')!r}, 'w')\n")
    path = tmp_path / "model.safetensors"
    save_file(nn.GRU(3, 4).state_dict(), str(path), metadata={"model": value})

    report = gradscope.analyze(path, steps=STEPS)

    assert report.recurrent[0].cell == "gru"
    assert not (tmp_path / "MARKER").exists()
    assert capsys.readouterr().out == ""  # ``import this`` would print the Zen of Python


def test_safetensors_with_model_option(tmp_path):
    module = seeded(SpeakerEncoder)
    path = tmp_path / "encoder.safetensors"
    save_file(module.state_dict(), str(path))

    loaded = load_model(path, LoadOptions(model="tests.helpers.checkpoints:SpeakerEncoder"))

    assert loaded.checkpoint_kind == "safetensors"
    assert torch.equal(loaded.module.lstm.weight_ih_l0, module.lstm.weight_ih_l0)


# --- damaged files -------------------------------------------------------------------------------


def test_a_damaged_safetensors_file_is_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "model.safetensors"
    save_file(nn.GRU(3, 4).state_dict(), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])

    message = one_line_error(["analyze", str(path)], capsys)

    assert "safetensors" in message and "truncated" in message
