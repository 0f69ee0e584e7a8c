"""Small models with parts that a view leaves out: an unused module, a bare parameter, ties."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SpareLSTM(nn.Module):
    """A GRU and a head; an LSTM that forward never calls; a parameter forward adds itself."""

    def __init__(self, gain: float = 1.0) -> None:
        super().__init__()
        self.rnn = nn.GRU(4, 6, batch_first=True)
        self.spare = nn.LSTM(4, 2)
        self.head = nn.Linear(6, 3)
        self.offset = nn.Parameter(torch.zeros(3))
        with torch.no_grad():
            self.rnn.weight_hh_l0.mul_(gain)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.rnn(x)[0]) + self.offset


class TiedHead(nn.Module):
    """An embedding whose weight the output layer shares."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.mix = nn.Linear(4, 4)
        self.out = nn.Linear(4, 10, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, ids: Tensor) -> Tensor:
        return self.out(self.mix(self.embed(ids)))
