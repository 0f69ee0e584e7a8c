"""Weights in a training loop's dict: under a key, beside optimizer state and plain data."""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from torch import nn

import gradscope
from gradscope.cli import main
from gradscope.loading import load_model

from tests.helpers.checkpoints import SpeakerEncoder
from tests.helpers.formats import STEPS, assert_same_dynamics, seeded


def test_a_speaker_encoder_in_a_training_loop_dict(tmp_path):
    """The issue's example: weights under model_state, beside optimizer state and a step."""
    model = seeded(SpeakerEncoder)
    path = tmp_path / "encoder.pt"
    optimizer = torch.optim.Adam(model.parameters())
    torch.save(
        {"step": 120, "model_state": model.state_dict(), "optimizer_state": optimizer.state_dict()},
        path,
    )

    report = gradscope.analyze(path, steps=STEPS, batch_first=True)

    assert [c.label for c in report.recurrent] == ["lstm[l0]", "lstm[l1]", "lstm[l2]"]
    assert [c.input_size for c in report.recurrent] == [12, 16, 16]
    assert report.model.architecture == "inferred from weights"
    assert report.model.not_analysed == ["linear (2 tensors): not recurrent"]
    assert any("'model_state'" in note for note in report.model.notes)
    assert any("--model" in note for note in report.model.notes)
    direct = gradscope.analyze(model, steps=STEPS)
    for got, want in zip(report.recurrent, direct.recurrent, strict=True):
        assert_same_dynamics(got, want)


def test_plain_data_beside_the_weights_loads_without_trust(tmp_path):
    module = seeded(lambda: nn.GRU(3, 4))
    path = tmp_path / "run.pt"
    torch.save(
        {
            "args": argparse.Namespace(hidden=4, lr=0.1),
            "best_loss": np.float64(0.25),
            "history": np.zeros(3),
            "net": module.state_dict(),
        },
        path,
    )

    loaded = load_model(path)

    assert torch.equal(loaded.parts[0].module.weight_hh_l0, module.weight_hh_l0)
    assert any("'net'" in note for note in loaded.notes)


def test_json_names_what_was_inferred(tmp_path, capsys):
    path = tmp_path / "encoder.pt"
    torch.save({"model": SpeakerEncoder().state_dict()}, path)

    code = main(["analyze", str(path), "--steps", "8", "--format", "json", "--exit-zero"])

    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["model"]["architecture"] == "inferred from weights"
    assert report["model"]["not_analysed"] == ["linear (2 tensors): not recurrent"]
    assert [core["name"] for core in report["recurrent"]] == ["lstm"] * 3


# --- what a first review found: each a reproducer ------------------------------------------------


def test_separate_weight_entries_without_a_known_key_are_all_analysed(tmp_path):
    """The chatbot tutorial saves {'en': encoder.state_dict(), 'de': decoder.state_dict()}."""
    path = tmp_path / "chatbot.tar"
    torch.save(
        {
            "iteration": 4000,
            "en": nn.GRU(5, 5, 2, bidirectional=True).state_dict(),
            "de": {**nn.GRU(5, 5).state_dict(), "out.weight": torch.zeros(9, 5)},
        },
        path,
    )

    report = gradscope.analyze(path, steps=STEPS)

    assert sorted({c.name for c in report.recurrent}) == ["de", "en"]
    assert "weights from the entries 'en', 'de'" in report.model.notes[0]
    assert report.model.not_analysed == ["de.out (1 tensor): not recurrent"]
