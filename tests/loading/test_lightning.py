"""Lightning checkpoints: the attribute prefix and hyper-parameters, without Lightning."""

from __future__ import annotations

import sys
import types

import torch

from gradscope.loading import load_model
from gradscope.options import LoadOptions

from tests.helpers.checkpoints import Forwarding, SpeakerEncoder, Wrapped
from tests.helpers.formats import seeded


def test_lightning_checkpoint_with_its_attribute_prefix_and_hyper_parameters(tmp_path):
    module = seeded(lambda: Wrapped(n_mels=5, hidden=9))
    path = tmp_path / "epoch=3.ckpt"
    torch.save(
        {
            "epoch": 3,
            "global_step": 300,
            "pytorch-lightning_version": "2.4.0",
            "state_dict": module.state_dict(),
            "hyper_parameters": {"n_mels": 5, "hidden": 9, "lr": 1e-3},
            "optimizer_states": [],
        },
        path,
    )

    loaded = load_model(path, LoadOptions(model="tests.helpers.checkpoints:SpeakerEncoder"))

    assert loaded.checkpoint_kind == "lightning-checkpoint"
    assert loaded.module.lstm.hidden_size == 9  # from hyper_parameters; lr does not fit
    assert torch.equal(loaded.module.lstm.weight_hh_l2, module.net.lstm.weight_hh_l2)
    assert any("'net.'" in note for note in loaded.notes)
    assert any("n_mels" in note and "hidden" in note for note in loaded.notes)


def test_lightning_attribute_dict_reads_as_a_plain_dict_without_lightning(tmp_path, monkeypatch):
    """Lightning saves hyper_parameters as its AttributeDict; gradscope needs no Lightning."""
    fake = types.ModuleType("lightning.fabric.utilities.data")

    class AttributeDict(dict):
        pass

    AttributeDict.__module__ = fake.__name__
    AttributeDict.__qualname__ = "AttributeDict"
    fake.AttributeDict = AttributeDict
    for package in ("lightning", "lightning.fabric", "lightning.fabric.utilities"):
        monkeypatch.setitem(sys.modules, package, types.ModuleType(package))
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    module = seeded(lambda: SpeakerEncoder(n_mels=5, hidden=9))
    path = tmp_path / "last.ckpt"
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in module.state_dict().items()},
            "hyper_parameters": AttributeDict(n_mels=5, hidden=9),
        },
        path,
    )
    for package in ("lightning", "lightning.fabric", "lightning.fabric.utilities", fake.__name__):
        monkeypatch.delitem(sys.modules, package)

    loaded = load_model(path, LoadOptions(model="tests.helpers.checkpoints:SpeakerEncoder"))

    assert loaded.module.lstm.input_size == 5


# --- what a first review found: each a reproducer ------------------------------------------------


def test_saved_hyper_parameters_a_kwargs_constructor_refuses_are_dropped(tmp_path):
    module = seeded(lambda: Forwarding(hidden=6))
    path = tmp_path / "fwd.ckpt"
    torch.save(
        {"state_dict": module.state_dict(), "hyper_parameters": {"hidden": 6, "lr": 0.1}}, path
    )

    loaded = load_model(path, LoadOptions(model="tests.helpers.checkpoints:Forwarding"))

    assert loaded.module.rnn.hidden_size == 6
    assert any("hidden" in note and "lr" not in note for note in loaded.notes)


def test_two_copies_of_the_model_are_said_and_the_plain_one_loaded(tmp_path):
    model, ema = seeded(SpeakerEncoder, 0), seeded(SpeakerEncoder, 1)
    weights = {f"model.{k}": v for k, v in model.state_dict().items()}
    weights |= {f"ema_model.{k}": v for k, v in ema.state_dict().items()}
    path = tmp_path / "teacher.ckpt"
    torch.save({"state_dict": weights, "hyper_parameters": {}}, path)

    loaded = load_model(path, LoadOptions(model="tests.helpers.checkpoints:SpeakerEncoder"))

    assert torch.equal(loaded.module.lstm.weight_hh_l0, model.lstm.weight_hh_l0)
    assert any("'ema_model.'" in note and "fit too" in note for note in loaded.notes)
