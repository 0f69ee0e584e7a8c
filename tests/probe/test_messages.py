"""What the probe run says when the model refuses it: advice that moves the user forward and
never repeats what the probe already does."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import gradscope
from gradscope.errors import GradscopeError
from gradscope.probe import Probe, run_model


class HalfInside(nn.Module):
    """A model whose own code casts its input to float16 before a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.out = nn.Linear(4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.lin(x.half()))


def test_dtype_advice_is_given_once_and_never_loops():
    with pytest.raises(GradscopeError, match="rerun with --dtype float32") as first:
        gradscope.analyze(HalfInside(), batch=2)
    with pytest.raises(GradscopeError) as second:
        gradscope.analyze(HalfInside(), batch=2, dtype="float32")
    assert "--dtype float32" not in str(second.value)
    assert "mixes dtypes" in str(second.value)
    assert str(first.value) != str(second.value)


def test_token_ids_where_the_model_reads_floats_ask_for_an_input_shape():
    ids = torch.randint(0, 10, (2, 5))
    probe = Probe(ids, 1, 0, "gaussian", 0, token_module="tok")
    reads_floats = nn.Linear(5, 3).double()

    with pytest.raises(GradscopeError, match="reads floating-point values there") as error:
        run_model(reads_floats, probe)
    assert "--dtype" not in str(error.value) and "tok" in str(error.value)


class KeywordOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(3, 4, batch_first=True)

    def forward(self, *, x: Tensor) -> Tensor:
        return self.gru(x)[0]


class WithLengths(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(3, 4, batch_first=True)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True)
        return nn.utils.rnn.pad_packed_sequence(self.gru(packed)[0], batch_first=True)[0]


def test_a_keyword_only_forward_is_told_how_to_name_its_input():
    with pytest.raises(GradscopeError, match=r"name=4,50,8 for a keyword"):
        gradscope.analyze(KeywordOnly(), steps=5)
    report = gradscope.analyze(KeywordOnly(), input_shape=["x=2,5,3"])
    assert report.recurrent[0].steps == 5


def test_inputs_that_are_not_floats_are_asked_for_in_a_probe_file():
    with pytest.raises(GradscopeError, match="need a --probe file holding them all"):
        gradscope.analyze(WithLengths(), input_shape=["2,5,3", "2"])
