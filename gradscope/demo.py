"""``gradscope demo``: the recurrent models of the course, built in process and compared."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from gradscope.api import Progress, analyze
from gradscope.report import Report

INPUT_SIZE = 16
HIDDEN_SIZE = 32


class SequenceModel(nn.Module):
    """A recurrent encoder with a linear read-out at every step."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        directions = 2 if encoder.bidirectional else 1
        self.head = nn.Linear(directions * encoder.hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, steps, features) -> (batch, steps, 1)."""
        return self.head(self.encoder(x)[0])


def _rnn() -> nn.Module:
    return nn.RNN(INPUT_SIZE, HIDDEN_SIZE, batch_first=True)


def _rnn_high_gain() -> nn.Module:
    rnn = _rnn()
    with torch.no_grad():
        rnn.weight_hh_l0.normal_(0.0, 3.0 / HIDDEN_SIZE**0.5)
    return rnn


def _lstm(**options) -> nn.Module:
    return nn.LSTM(INPUT_SIZE, HIDDEN_SIZE, batch_first=True, **options)


def _lstm_forget_bias_1() -> nn.Module:
    lstm = _lstm()
    with torch.no_grad():
        lstm.bias_ih_l0[HIDDEN_SIZE : 2 * HIDDEN_SIZE].fill_(1.0)
        lstm.bias_hh_l0[HIDDEN_SIZE : 2 * HIDDEN_SIZE].zero_()
    return lstm


@dataclass(frozen=True)
class DemoModel:
    """One model of the comparison."""

    name: str
    description: str
    build: Callable[[], nn.Module]


DEMO_MODELS = (
    DemoModel("rnn", "vanilla tanh RNN, default init", _rnn),
    DemoModel("rnn-gain-3", "the same RNN, recurrent gain 3", _rnn_high_gain),
    DemoModel("lstm", "LSTM, default init", _lstm),
    DemoModel("lstm-forget-1", "LSTM, forget-gate bias 1", _lstm_forget_bias_1),
    DemoModel(
        "gru", "GRU, default init", lambda: nn.GRU(INPUT_SIZE, HIDDEN_SIZE, batch_first=True)
    ),
    DemoModel("lstm-2-layer", "2-layer LSTM", lambda: _lstm(num_layers=2)),
    DemoModel("lstm-bidir", "bidirectional LSTM", lambda: _lstm(bidirectional=True)),
)


def run_demo(
    seed: int = 0, progress: Progress | None = None, **options
) -> list[tuple[DemoModel, Report]]:
    """Build every demo model with ``seed`` and analyse it with the same probe."""
    results = []
    for demo in DEMO_MODELS:
        if progress is not None:
            progress(f"demo: {demo.description}")
        torch.manual_seed(seed)
        model = SequenceModel(demo.build())
        results.append((demo, analyze(model, seed=seed, **options)))
    return results
