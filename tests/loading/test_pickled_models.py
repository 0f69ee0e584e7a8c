"""Whole pickled models: --allow-global admits exactly the named classes, never a function."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

import gradscope
from gradscope.errors import GradscopeError
from gradscope.loading import load_model
from gradscope.options import LoadOptions

from tests.helpers.checkpoints import SpeakerEncoder
from tests.helpers.formats import one_line_error, seeded

# --- --allow-global ------------------------------------------------------------------------------


def test_allow_global_loads_exactly_the_named_class_weights_only(tmp_path):
    path = tmp_path / "whole.pt"
    module = seeded(SpeakerEncoder)
    torch.save(module, path)

    with pytest.raises(
        GradscopeError, match=r"tests\.helpers\.checkpoints\.SpeakerEncoder.*--allow-global"
    ):
        load_model(path)
    loaded = load_model(
        path, LoadOptions(allow_globals=("tests.helpers.checkpoints:SpeakerEncoder",))
    )

    assert type(loaded.module) is SpeakerEncoder
    assert torch.equal(loaded.module.lstm.weight_hh_l0, module.lstm.weight_hh_l0)


def test_allow_global_that_cannot_be_imported(tmp_path, capsys):
    path = tmp_path / "whole.pt"
    torch.save(SpeakerEncoder(), path)

    message = one_line_error(
        ["analyze", str(path), "--allow-global", "no_such_pkg.mod:Thing"], capsys
    )

    assert "tests.helpers.checkpoints.SpeakerEncoder" in message  # still needed, still refused


# --- what a first review found: each a reproducer ------------------------------------------------


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
        load_model(path, LoadOptions(allow_globals=("tests.helpers.checkpoints:Tagger",)))
    assert type(
        gradscope.analyze(path, allow_globals="tests.helpers.checkpoints:SpeakerEncoder", steps=4)
    )


def test_complex_weights_are_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "complex.pt"
    torch.save(nn.Sequential(nn.Linear(3, 3, dtype=torch.complex64), nn.RNN(3, 3)), path)

    message = one_line_error(["analyze", str(path)], capsys)

    assert "complex" in message


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(3, 4)


class Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(4, 4)


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.out = nn.Linear(4, 2)


class Seq2Seq(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder, self.decoder, self.head = Encoder(), Decoder(), Head()


class Recursive(nn.Module):
    """A module whose own unpickling code fails, as a library's can."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(3, 4)

    def __setstate__(self, state):
        raise RecursionError("maximum recursion depth exceeded while restoring the module")


def test_the_allow_global_suggestion_names_every_class_the_file_needs(tmp_path):
    path = tmp_path / "seq2seq.pt"
    torch.save(Seq2Seq(), path)
    with pytest.raises(GradscopeError) as raised:
        load_model(path)
    message = str(raised.value)
    for name in ("Seq2Seq", "Encoder", "Decoder", "Head"):
        assert f"--allow-global tests.loading.test_pickled_models.{name}" in message
    assert "\n" not in message


def test_an_error_in_the_model_s_own_code_is_not_called_corruption(tmp_path, capsys):
    path = tmp_path / "recursive.pt"
    torch.save(Recursive(), path)
    message = one_line_error(["analyze", str(path), "--trust"], capsys)
    assert "the model's own code raised RecursionError" in message
    assert "corrupt" not in message


def test_a_damaged_file_loaded_as_code_is_still_called_damaged(tmp_path, capsys):
    path = tmp_path / "damaged.pt"
    torch.save(Seq2Seq(), path)
    path.write_bytes(path.read_bytes()[:300])
    assert "corrupt" in one_line_error(["analyze", str(path), "--trust"], capsys)


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_a_whole_transformer_encoder_loads_without_trust(tmp_path, activation):
    """Its layers hold F.relu or F.gelu: pure functions on an explicit list."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, activation=activation, batch_first=True)
    path = tmp_path / "encoder.pt"
    torch.save(nn.TransformerEncoder(layer, 3), path)

    report = gradscope.analyze(path, steps=10, batch=2)

    assert report.settings.input_shape == [2, 10, 16]
    assert report.stack.residual_blocks == 3
    assert report.complete


def test_a_torch_function_off_the_list_is_refused_and_never_runs(tmp_path, capsys):
    marker = tmp_path / "MARKER"

    class Payload:
        def __reduce__(self):
            return (torch.save, ({}, str(marker)))

    path = tmp_path / "evil.pt"
    with path.open("wb") as file:
        torch.save({"model": nn.GRU(3, 4).state_dict(), "x": Payload()}, file)

    message = one_line_error(["analyze", str(path)], capsys)
    assert "torch.serialization.save" in message and "--trust" in message
    assert not marker.exists()


SCRIPT = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(3, 8, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


if __name__ == "__main__":
    torch.manual_seed(0)
    torch.save(Net(), "net.pt")
"""


def test_a_model_pickled_by_a_script_run_directly_is_read_with_its_script(tmp_path, capsys):
    import __main__

    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    subprocess.run([sys.executable, str(script)], cwd=tmp_path, check=True)
    path = tmp_path / "net.pt"

    for flags in ([], ["--trust"]):
        message = one_line_error(["analyze", str(path), *flags], capsys)
        assert "pickled by a script run directly" in message and "Net" in message
        assert "--trust --model path/to/script.py:Net" in message

    report = gradscope.analyze(path, trust=True, model=f"{script}:Net", steps=10)

    assert [core.name for core in report.recurrent] == ["rnn"]
    assert any("read from --model" in note for note in report.model.notes)
    assert not hasattr(__main__, "Net")  # the mapping lasts only while unpickling


def test_a_script_that_saves_and_analyses_its_own_model_needs_no_mapping(tmp_path):
    import __main__

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(3, 4, batch_first=True)

        def forward(self, x):
            return self.rnn(x)[0]

    Net.__module__, Net.__qualname__ = "__main__", "GradscopeTestNet"
    __main__.GradscopeTestNet = Net
    try:
        path = tmp_path / "net.pt"
        torch.save(Net(), path)
        report = gradscope.analyze(path, trust=True, steps=5)
    finally:
        del __main__.GradscopeTestNet
    assert [core.name for core in report.recurrent] == ["rnn"]
