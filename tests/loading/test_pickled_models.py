"""Whole pickled models: --allow-global admits exactly the named classes, never a function."""

from __future__ import annotations

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
