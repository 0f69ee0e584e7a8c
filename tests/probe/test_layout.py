"""The probe's layout: module kinds by class (never by name alone), sizes read defensively."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradscope
from gradscope.errors import GradscopeError
from gradscope.probe import feedforward_layout, input_layout


class LayerNorm(nn.Module):
    """A library's own norm that only shares PyTorch's class name (no normalized_shape)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = 1e-5

    def forward(self, x):
        return self.weight * (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + self.eps)


class Linear(nn.Module):
    """A user class named Linear that states no in_features."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.eye(width))

    def forward(self, x):
        return x @ self.weight


class PreNormEncoder(nn.Module):
    """Its own LayerNorm first, then an LSTM: the LSTM says the input size."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = LayerNorm(6)
        self.rnn = nn.LSTM(6, 5, batch_first=True)

    def forward(self, x):
        return self.rnn(self.norm(x))[0]


def test_a_user_class_named_like_a_pytorch_module_is_not_taken_for_it():
    layout = input_layout(PreNormEncoder())
    assert layout.features == 6 and layout.batch_first
    report = gradscope.analyze(PreNormEncoder(), steps=12, exponents=2)
    assert [core.cell for core in report.recurrent] == ["lstm"]
    assert report.settings.input_shape == [1, 12, 6]


def test_an_unknown_first_module_asks_for_the_input_shape_in_one_line():
    model = nn.Sequential(Linear(4), nn.Tanh(), Linear(4), nn.Tanh(), Linear(4))
    with pytest.raises(GradscopeError, match=r"starts with 0 \(Linear\).*--input-shape") as raised:
        feedforward_layout(model)
    assert "\n" not in str(raised.value) and "16,3,32,32" not in str(raised.value)
    report = gradscope.analyze(model, input_shape="8,4")
    assert report.stack is not None and report.stack.blocks == 3


def test_pytorch_subclasses_keep_their_kind():
    class MyLinear(nn.Linear):
        pass

    assert feedforward_layout(nn.Sequential(MyLinear(7, 3), nn.ReLU())).features == 7
