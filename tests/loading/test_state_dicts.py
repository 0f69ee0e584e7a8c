"""Every checkpoint format a user may have, each file built here, each checked against the model.

A format is read right when gradscope's numbers for the file equal its numbers for the model
object the file was saved from: the same cores, the same exponents and spectra, and, where the
whole model runs, the same input gradient.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import types

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import gradscope
from gradscope.cli import main
from gradscope.errors import GradscopeError
from gradscope.loading import load_model
from gradscope.loading.weights import fit_prefix, strip_wrappers

from tests.helpers.checkpoints import (
    ConvFrontEnd,
    DictOut,
    Forwarding,
    ObjectOutput,
    SpeakerEncoder,
    Tagger,
    Wrapped,
)

STEPS = 16


def seeded(factory, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return factory()


def assert_same_dynamics(got, want, rel: float = 1e-9) -> None:
    """Two cores are one map on one trajectory: exponents and spectra agree."""
    assert got.cell == want.cell and got.state_size == want.state_size
    assert got.lyapunov == pytest.approx(want.lyapunov, rel=rel, abs=1e-12)
    for key in ("spectral_radius", "sigma_max"):
        assert got.jacobian[key]["median"] == pytest.approx(want.jacobian[key]["median"], rel=rel)


def one_line_error(args: list[str], capsys) -> str:
    code = main(args)
    captured = capsys.readouterr()
    assert code == 2, captured
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    return captured.err


# --- architecture from the weights alone ------------------------------------------------------

INFERABLE = {
    "rnn-tanh-2-layers": lambda: nn.RNN(3, 7, 2),
    "rnn-no-bias": lambda: nn.RNN(3, 7, bias=False),
    "lstm-bidirectional": lambda: nn.LSTM(3, 5, bidirectional=True),
    "lstm-proj": lambda: nn.LSTM(3, 6, 2, proj_size=4),
    "gru-2-layers-bidirectional": lambda: nn.GRU(3, 4, 2, bidirectional=True),
    "lstm-cell": lambda: nn.LSTMCell(3, 5),
    "gru-cell": lambda: nn.GRUCell(3, 5),
    "rnn-cell": lambda: nn.RNNCell(3, 5),
}


@pytest.mark.parametrize("kind", INFERABLE)
def test_a_bare_state_dict_is_rebuilt_into_the_same_cores(tmp_path, kind):
    module = seeded(INFERABLE[kind])
    path = tmp_path / "weights.pt"
    torch.save(module.state_dict(), path)

    rebuilt = load_model(path).parts[0].module
    assert type(rebuilt) is type(module)
    for name in ("input_size", "hidden_size", "num_layers", "bidirectional", "bias", "proj_size"):
        assert getattr(rebuilt, name, None) == getattr(module, name, None), name

    if kind.endswith("cell"):
        return  # a cell alone has no sequence to run; the looped cell is checked below
    report = gradscope.analyze(path, steps=STEPS, batch=2)
    direct = gradscope.analyze(module, steps=STEPS, batch=2)
    assert [c.label for c in report.recurrent] == [c.label for c in direct.recurrent]
    for got, want in zip(report.recurrent, direct.recurrent, strict=True):
        assert_same_dynamics(got, want)
        assert got.grad_norm == pytest.approx(want.grad_norm, rel=1e-9)


def test_a_cell_from_weights_is_looped_over_the_probe(tmp_path):
    path = tmp_path / "cell.pt"
    cell = seeded(lambda: nn.LSTMCell(3, 5))
    torch.save({"decoder.cell." + k: v for k, v in cell.state_dict().items()}, path)

    report = gradscope.analyze(path, steps=STEPS)

    (core,) = report.recurrent
    assert (core.name, core.cell, core.steps) == ("decoder.cell", "lstm", STEPS)
    assert len(core.lyapunov) == 8 and all(math.isfinite(v) for v in core.lyapunov)


def test_a_vanilla_rnn_from_weights_assumes_tanh_and_says_so(tmp_path):
    relu = seeded(lambda: nn.RNN(3, 6, nonlinearity="relu"))
    path = tmp_path / "rnn.pt"
    torch.save(relu.state_dict(), path)

    assumed = gradscope.analyze(path, steps=STEPS)
    told = gradscope.analyze(path, steps=STEPS, nonlinearity="relu")

    assert assumed.recurrent[0].cell == "rnn_tanh"
    assert any(
        "assumed tanh" in note and "--nonlinearity" in note for note in assumed.model["notes"]
    )
    assert told.recurrent[0].cell == "rnn_relu"
    assert not any("assumed tanh" in note for note in told.model["notes"])
    assert_same_dynamics(told.recurrent[0], gradscope.analyze(relu, steps=STEPS).recurrent[0])


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
    assert report.model["architecture"] == "inferred from weights"
    assert report.model["not_analysed"] == ["linear (2 tensors): not recurrent"]
    assert any("'model_state'" in note for note in report.model["notes"])
    assert any("--model" in note for note in report.model["notes"])
    direct = gradscope.analyze(model, steps=STEPS)
    for got, want in zip(report.recurrent, direct.recurrent, strict=True):
        assert_same_dynamics(got, want)


def test_weights_that_fit_no_recurrent_module_are_named(tmp_path):
    path = tmp_path / "odd.pt"
    weights = nn.GRU(3, 4).state_dict()
    weights["odd.weight_ih_l0"] = torch.zeros(10, 3)
    weights["odd.weight_hh_l0"] = torch.zeros(10, 4)  # 10 rows: not 1, 3 or 4 gates of 4
    torch.save(weights, path)

    loaded = load_model(path)

    assert [part.name for part in loaded.parts] == [""]
    assert any(entry.startswith("odd:") and "fits no" in entry for entry in loaded.not_analysed)


# --- containers, prefixes and hyper-parameters -------------------------------------------------


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

    loaded = load_model(path, model="tests.helpers.checkpoints:SpeakerEncoder")

    assert loaded.format == "lightning-checkpoint"
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

    loaded = load_model(path, model="tests.helpers.checkpoints:SpeakerEncoder")

    assert loaded.module.lstm.input_size == 5


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


def test_wrapper_prefixes_are_removed():
    weights = {"module._orig_mod.lstm.weight": torch.zeros(1), "module.head.bias": torch.zeros(1)}
    stripped, removed = strip_wrappers(weights)
    assert list(stripped) == ["lstm.weight", "head.bias"]
    assert removed == ["module.", "_orig_mod."]


def test_a_module_attribute_named_module_is_kept():
    """DeepSpeech's SequenceWise and AWD-LSTM's WeightDrop keep a submodule called ``module``."""
    weights = {"fc.module.weight": torch.zeros(1), "rnn.weight_hh_l0": torch.zeros(1)}
    assert strip_wrappers(weights) == (weights, [])


@pytest.mark.parametrize(
    ("saved", "note"),
    [
        ("model.{}", "'model.'"),
        ("system.net.{}", "'system.net.'"),
        ("{}", None),
    ],
)
def test_the_prefix_that_fits_the_model_is_found(saved, note):
    expected = SpeakerEncoder().state_dict()
    weights = {saved.format(k): v for k, v in expected.items()}
    weights[saved.format("extra.weight").replace("model.", "loss.")] = torch.zeros(2)

    fitted, said = fit_prefix(weights, expected)

    assert set(expected) <= set(fitted)
    assert (said is None) == (note is None) and (note is None or note in said)


def test_a_missing_prefix_is_added():
    expected = Wrapped().state_dict()
    weights = {k.removeprefix("net."): v for k, v in expected.items() if k.startswith("net.")}

    fitted, said = fit_prefix(weights, {k: v for k, v in expected.items() if "net." in k})

    assert set(fitted) == {k for k in expected if k.startswith("net.")}
    assert "'net.'" in said


def test_data_parallel_and_compiled_checkpoints_with_model(tmp_path):
    module = seeded(SpeakerEncoder)
    path = tmp_path / "ddp.pt"
    torch.save({f"module._orig_mod.{k}": v for k, v in module.state_dict().items()}, path)

    loaded = load_model(path, model="tests.helpers.checkpoints:SpeakerEncoder")

    assert torch.equal(loaded.module.linear.weight, module.linear.weight)
    assert any("'module.'" in note for note in loaded.notes)


# --- safetensors --------------------------------------------------------------------------------


def test_safetensors_without_a_class_is_inferred(tmp_path):
    module = seeded(lambda: nn.GRU(3, 4, 2))
    path = tmp_path / "model.safetensors"
    save_file(module.state_dict(), str(path), metadata={"format": "pt"})

    report = gradscope.analyze(path, steps=STEPS)

    assert report.model["format"] == "safetensors"
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

    assert untrusted.model["architecture"] == "inferred from weights"
    assert any(
        "--model tests.helpers.checkpoints:SpeakerEncoder" in n for n in untrusted.model["notes"]
    )
    direct = gradscope.analyze(module, steps=STEPS)
    for report in (trusted, named):  # the metadata's arguments build it either way
        assert report.model["class"] == "SpeakerEncoder"
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

    loaded = load_model(path, model="tests.helpers.checkpoints:SpeakerEncoder")

    assert loaded.format == "safetensors"
    assert torch.equal(loaded.module.lstm.weight_ih_l0, module.lstm.weight_ih_l0)


# --- TorchScript and exported programs ---------------------------------------------------------


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

    assert report.model["format"] == "torchscript"
    assert report.model["class"] == "SpeakerEncoder"
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
    assert not any("assumed" in note for note in report.model["notes"])


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

    assert report.model["format"] == "exported-program"
    assert report.settings["input_shape"] == [3, 9, 12]
    assert [c.steps for c in report.recurrent] == [9, 9, 9]
    assert report.input_grad_norm == pytest.approx(direct.input_grad_norm, rel=1e-4)
    for got, want in zip(
        report.recurrent, gradscope.analyze(module, steps=9, batch=3).recurrent, strict=True
    ):
        assert_same_dynamics(got, want)


# --- --allow-global -----------------------------------------------------------------------------


def test_allow_global_loads_exactly_the_named_class_weights_only(tmp_path):
    path = tmp_path / "whole.pt"
    module = seeded(SpeakerEncoder)
    torch.save(module, path)

    with pytest.raises(
        GradscopeError, match=r"tests\.helpers\.checkpoints\.SpeakerEncoder.*--allow-global"
    ):
        load_model(path)
    loaded = load_model(path, allow_globals=("tests.helpers.checkpoints:SpeakerEncoder",))

    assert type(loaded.module) is SpeakerEncoder
    assert torch.equal(loaded.module.lstm.weight_hh_l0, module.lstm.weight_hh_l0)


def test_allow_global_that_cannot_be_imported(tmp_path, capsys):
    path = tmp_path / "whole.pt"
    torch.save(SpeakerEncoder(), path)

    message = one_line_error(
        ["analyze", str(path), "--allow-global", "no_such_pkg.mod:Thing"], capsys
    )

    assert "tests.helpers.checkpoints.SpeakerEncoder" in message  # still needed, still refused


# --- inputs and outputs of arbitrary models ----------------------------------------------------


def test_output_key_picks_the_tensor_the_loss_reads():
    model = seeded(Tagger)
    default = gradscope.analyze(model, steps=STEPS)
    logits = gradscope.analyze(model, steps=STEPS, output_key="logits")
    features = gradscope.analyze(model, steps=STEPS, output_key="features")

    assert default.settings["input_shape"] == [1, STEPS]  # token ids, batch-first
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


def test_a_convolutional_front_end_needs_the_input_shape():
    model = seeded(ConvFrontEnd)
    with pytest.raises(GradscopeError, match=r"Conv1d, 4 input channels.*--input-shape B,4,L"):
        gradscope.analyze(model, steps=STEPS)

    report = gradscope.analyze(model, input_shape=(2, 4, STEPS))

    assert report.recurrent[0].steps == STEPS
    assert len(report.input_grad_norm) == STEPS  # time is the last axis of a Conv1d input


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


def test_json_names_what_was_inferred(tmp_path, capsys):
    path = tmp_path / "encoder.pt"
    torch.save({"model": SpeakerEncoder().state_dict()}, path)

    code = main(["analyze", str(path), "--steps", "8", "--format", "json", "--exit-zero"])

    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["model"]["architecture"] == "inferred from weights"
    assert report["model"]["not_analysed"] == ["linear (2 tensors): not recurrent"]
    assert [core["name"] for core in report["recurrent"]] == ["lstm"] * 3


# --- files saved elsewhere, and damaged files ---------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_checkpoint_saved_on_a_gpu_loads_on_the_cpu(tmp_path, monkeypatch, legacy):
    module = seeded(lambda: nn.GRU(3, 4))
    path = tmp_path / "gpu.pt"
    with monkeypatch.context() as patch:  # record every storage as if it lived on cuda:0
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save({"model": module.state_dict()}, path, _use_new_zipfile_serialization=not legacy)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)  # what a plain load does on a CPU-only machine

    loaded = load_model(path)

    assert torch.equal(loaded.parts[0].module.weight_hh_l0, module.weight_hh_l0)


def test_a_damaged_safetensors_file_is_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "model.safetensors"
    save_file(nn.GRU(3, 4).state_dict(), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])

    message = one_line_error(["analyze", str(path)], capsys)

    assert "safetensors" in message and "truncated" in message


def test_a_zip_that_is_not_a_checkpoint_is_a_one_line_error(tmp_path, capsys):
    import zipfile

    path = tmp_path / "archive.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not a model")

    message = one_line_error(["analyze", str(path)], capsys)

    assert "zip archive with no PyTorch checkpoint" in message


# --- what a first review found: each a reproducer -----------------------------------------------


def test_allow_global_never_allows_a_function(tmp_path, capsys):
    marker = tmp_path / "MARKER"

    class Payload:
        def __reduce__(self):
            return (eval, (f"open({str(marker)!r}, 'w')",))

    path = tmp_path / "evil.pt"
    with path.open("wb") as file:
        torch.save({"model": nn.GRU(3, 4).state_dict(), "x": Payload()}, file)

    refused = one_line_error(["analyze", str(path)], capsys)
    assert "builtins.eval" in refused and "--allow-global" not in refused
    message = one_line_error(["analyze", str(path), "--allow-global", "builtins.eval"], capsys)
    assert "code" in message
    assert not marker.exists()


def test_an_allow_global_the_file_does_not_need_is_said(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(SpeakerEncoder(), path)

    with pytest.raises(
        GradscopeError, match=r"tests\.helpers\.checkpoints:Tagger: not needed by the file"
    ):
        load_model(path, allow_globals=("tests.helpers.checkpoints:Tagger",))
    assert type(
        gradscope.analyze(path, allow_globals="tests.helpers.checkpoints:SpeakerEncoder", steps=4)
    )


def test_output_key_reads_the_whole_program_not_its_rebuilt_parts(tmp_path):
    module = seeded(DictOut)
    path = tmp_path / "dict.ts"
    torch.jit.save(torch.jit.script(module), str(path))

    scripted = gradscope.analyze(path, trust=True, steps=STEPS, output_key="hidden")
    direct = gradscope.analyze(module, steps=STEPS, output_key="hidden")

    assert scripted.input_grad_norm == pytest.approx(direct.input_grad_norm, rel=1e-9)


def test_a_probe_file_drives_the_parts_it_fits_and_the_settings_say_so(tmp_path):
    weights = {
        **{f"a.{k}": v for k, v in nn.GRU(3, 4).state_dict().items()},
        **{f"b.{k}": v for k, v in nn.LSTM(6, 4).state_dict().items()},
    }
    path = tmp_path / "two.pt"
    torch.save(weights, path)
    probe = tmp_path / "probe.pt"
    torch.save(torch.randn(9, 2, 6), probe)
    wrong = tmp_path / "wrong.pt"
    torch.save(torch.randn(9, 2, 5), wrong)

    report = gradscope.analyze(path, probe=str(probe))

    assert [(c.name, c.steps) for c in report.recurrent] == [("a", 9), ("b", 9)]
    assert (report.settings["steps"], report.settings["batch"]) == (9, 2)
    assert report.settings["input_shape"] == [9, 2, 6]
    assert any(note.startswith("a: the probe does not fit") for note in report.model["notes"])
    with pytest.raises(GradscopeError, match=r"fits none of the parts.*a 3, b 6"):
        gradscope.analyze(path, probe=str(wrong))


def test_an_exported_program_cores_follow_steps_when_given(tmp_path):
    module = seeded(SpeakerEncoder).eval()
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(module, (torch.randn(2, 7, 12),)), str(path))

    report = gradscope.analyze(path, trust=True, steps=30)
    shaped = gradscope.analyze(path, trust=True, input_shape=(2, 7, 12))

    assert [c.steps for c in report.recurrent] == [30, 30, 30]
    assert len(report.input_grad_norm) == 7
    assert any("example" not in n and "(2, 7, 12)" in n for n in report.model["notes"])
    assert len(shaped.input_grad_norm) == 7
    assert not any("not measured" in note for note in shaped.model["notes"])


def test_saved_hyper_parameters_a_kwargs_constructor_refuses_are_dropped(tmp_path):
    module = seeded(lambda: Forwarding(hidden=6))
    path = tmp_path / "fwd.ckpt"
    torch.save(
        {"state_dict": module.state_dict(), "hyper_parameters": {"hidden": 6, "lr": 0.1}}, path
    )

    loaded = load_model(path, model="tests.helpers.checkpoints:Forwarding")

    assert loaded.module.rnn.hidden_size == 6
    assert any("hidden" in note and "lr" not in note for note in loaded.notes)


def test_two_copies_of_the_model_are_said_and_the_plain_one_loaded(tmp_path):
    model, ema = seeded(SpeakerEncoder, 0), seeded(SpeakerEncoder, 1)
    weights = {f"model.{k}": v for k, v in model.state_dict().items()}
    weights |= {f"ema_model.{k}": v for k, v in ema.state_dict().items()}
    path = tmp_path / "teacher.ckpt"
    torch.save({"state_dict": weights, "hyper_parameters": {}}, path)

    loaded = load_model(path, model="tests.helpers.checkpoints:SpeakerEncoder")

    assert torch.equal(loaded.module.lstm.weight_hh_l0, model.lstm.weight_hh_l0)
    assert any("'ema_model.'" in note and "fit too" in note for note in loaded.notes)


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
    assert "weights from the entries 'en', 'de'" in report.model["notes"][0]
    assert report.model["not_analysed"] == ["de.out (1 tensor): not recurrent"]


@pytest.mark.parametrize("extra", [None, 2, "v2"])
def test_a_state_dict_with_scalars_beside_the_tensors(tmp_path, extra):
    path = tmp_path / "extra.pt"
    torch.save({**nn.GRU(3, 4).state_dict(), "_extra_state": extra}, path)

    assert load_model(path).parts[0].module.hidden_size == 4


@pytest.mark.parametrize("style", ["old", "parametrization"])
def test_weight_normed_recurrent_weights_are_folded(tmp_path, style):
    from torch.nn.utils import parametrizations, weight_norm

    module = seeded(lambda: nn.GRU(3, 4))
    if style == "old":
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            normed = weight_norm(module, "weight_hh_l0")
    else:
        normed = parametrizations.weight_norm(module, "weight_hh_l0")
    path = tmp_path / "wn.pt"
    torch.save(normed.state_dict(), path)
    plain = nn.GRU(3, 4)
    with torch.no_grad():
        for name, value in plain.named_parameters():
            value.copy_(getattr(normed, name))

    report = gradscope.analyze(path, steps=STEPS)

    assert any("weight norm folded into weight_hh_l0" in n for n in report.model["notes"])
    assert_same_dynamics(report.recurrent[0], gradscope.analyze(plain, steps=STEPS).recurrent[0])


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ({"weight_ih_l0": torch.zeros(12, 3), "weight_hh_l0": torch.zeros(12, 0)}, "empty"),
        ({"weight_ih_l0": torch.zeros(12, 0), "weight_hh_l0": torch.zeros(12, 3)}, "empty"),
        ({"weight_ih_l0": torch.zeros(12, 3), "weight_hh_l0": torch.zeros(12, 3).long()}, "int"),
        (
            {"weight_ih_l0": torch.zeros(12, 3), "weight_hh_l0": torch.zeros(12, 3).to_sparse()},
            "sparse",
        ),
    ],
    ids=["no-hidden", "no-input", "integer", "sparse"],
)
def test_weights_that_cannot_be_rebuilt_say_why(tmp_path, capsys, weights, expected):
    path = tmp_path / "odd.pt"
    torch.save(weights, path)

    message = one_line_error(["analyze", str(path)], capsys)

    assert expected in message and "--model" in message


def test_a_root_cell_from_weights_keeps_the_model_name(tmp_path):
    path = tmp_path / "cell.pt"
    torch.save(nn.LSTMCell(3, 5).state_dict(), path)

    (core,) = gradscope.analyze(path, steps=STEPS).recurrent

    assert core.name == "" and core.label == "(model)"


def test_complex_weights_are_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "complex.pt"
    torch.save(nn.Sequential(nn.Linear(3, 3, dtype=torch.complex64), nn.RNN(3, 3)), path)

    message = one_line_error(["analyze", str(path)], capsys)

    assert "complex" in message


def test_options_for_the_whole_model_are_said_to_be_ignored_without_it(tmp_path):
    path = tmp_path / "gru.pt"
    torch.save(nn.GRU(3, 4).state_dict(), path)

    report = gradscope.analyze(path, steps=STEPS, output_key="logits", cells=["cell"])

    assert any("--output-key logits, --cell cell ignored" in n for n in report.model["notes"])
