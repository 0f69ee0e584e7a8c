"""Bare state dicts: the architecture rebuilt from the weights alone, and prefixes fitted."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradscope
from gradscope.errors import GradscopeError
from gradscope.loading import load_model
from gradscope.loading.weights import fit_prefix, strip_wrappers
from gradscope.options import LoadOptions

from tests.helpers.checkpoints import SpeakerEncoder, Wrapped
from tests.helpers.formats import STEPS, assert_same_dynamics, one_line_error, seeded

# --- architecture from the weights alone ---------------------------------------------------------


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
    assert any("assumed tanh" in note and "--nonlinearity" in note for note in assumed.model.notes)
    assert told.recurrent[0].cell == "rnn_relu"
    assert not any("assumed tanh" in note for note in told.model.notes)
    assert_same_dynamics(told.recurrent[0], gradscope.analyze(relu, steps=STEPS).recurrent[0])


def test_weights_that_fit_no_recurrent_module_are_named(tmp_path):
    path = tmp_path / "odd.pt"
    weights = nn.GRU(3, 4).state_dict()
    weights["odd.weight_ih_l0"] = torch.zeros(10, 3)
    weights["odd.weight_hh_l0"] = torch.zeros(10, 4)  # 10 rows: not 1, 3 or 4 gates of 4
    torch.save(weights, path)

    loaded = load_model(path)

    assert [part.name for part in loaded.parts] == [""]
    assert any(entry.startswith("odd:") and "fits no" in entry for entry in loaded.not_analysed)


# --- prefixes ------------------------------------------------------------------------------------


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


def test_weights_that_fit_under_no_prefix_are_named_as_saved(tmp_path, capsys):
    """No prefix makes these fit: the mismatch names the keys as the file holds them."""
    saved = {"model.enc.weight": torch.zeros(4, 3), "model.enc.bias": torch.zeros(4)}
    saved["loss.weight"] = torch.zeros(2)  # under 'model.' the count would match better
    expected = {"enc.weight": torch.zeros(5, 5), "proj.bias": torch.zeros(5)}
    assert fit_prefix(saved, expected) == (saved, None)

    path = tmp_path / "other.pt"
    torch.save(saved, path)
    message = one_line_error(
        ["analyze", str(path), "--model", "tests.helpers.checkpoints:SpeakerEncoder"], capsys
    )
    assert "model.enc.weight" in message and "'enc.weight'" not in message


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

    loaded = load_model(path, LoadOptions(model="tests.helpers.checkpoints:SpeakerEncoder"))

    assert torch.equal(loaded.module.linear.weight, module.linear.weight)
    assert any("'module.'" in note for note in loaded.notes)


# --- what a first review found: each a reproducer ------------------------------------------------


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
    assert (report.settings.steps, report.settings.batch) == (9, 2)
    assert report.settings.input_shape == [9, 2, 6]
    assert any(note.startswith("a: the probe does not fit") for note in report.model.notes)
    with pytest.raises(GradscopeError, match=r"fits none of the parts.*a 3, b 6"):
        gradscope.analyze(path, probe=str(wrong))


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

    assert any("weight norm folded into weight_hh_l0" in n for n in report.model.notes)
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


def test_options_for_the_whole_model_are_said_to_be_ignored_without_it(tmp_path):
    path = tmp_path / "gru.pt"
    torch.save(nn.GRU(3, 4).state_dict(), path)

    report = gradscope.analyze(path, steps=STEPS, output_key="logits", cells=["cell"])

    assert any("--output-key logits, --cell cell ignored" in n for n in report.model.notes)
