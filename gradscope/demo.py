"""``gradscope demo``: the models of the course, built in process and compared.

Recurrent models over time, then deep stacks over depth: a sigmoid MLP with Xavier init, the
same MLP with ReLU and He init, and residual versions with unscaled and scaled branches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from gradscope.api import analyze
from gradscope.pipeline import Progress
from gradscope.report import Report

INPUT_SIZE = 16
HIDDEN_SIZE = 32
DEPTH = 50
WIDTH = 256


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


def _mlp(activation: type[nn.Module], he: bool) -> nn.Module:
    """DEPTH (Linear, activation) layers of WIDTH, zero bias; Xavier or He normal init."""
    layers: list[nn.Module] = []
    for _ in range(DEPTH):
        linear = nn.Linear(WIDTH, WIDTH)
        if he:
            nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
        else:
            nn.init.xavier_normal_(linear.weight)
        nn.init.zeros_(linear.bias)
        layers += [linear, activation()]
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    """``x + alpha * W2 relu(W1 x)``, He-initialised branch."""

    def __init__(self, width: int, alpha: float) -> None:
        super().__init__()
        self.alpha = alpha
        self.inner = nn.Linear(width, width)
        self.outer = nn.Linear(width, width)
        nn.init.kaiming_normal_(self.inner.weight, nonlinearity="relu")
        nn.init.normal_(self.outer.weight, 0.0, (1 / width) ** 0.5)
        nn.init.zeros_(self.inner.bias)
        nn.init.zeros_(self.outer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The identity path plus the scaled branch."""
        return x + self.alpha * self.outer(torch.relu(self.inner(x)))


def _residual(alpha: float) -> nn.Module:
    return nn.Sequential(*(ResidualBlock(WIDTH, alpha) for _ in range(DEPTH)))


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

DEMO_DEEP_MODELS = (
    DemoModel("mlp-sigmoid", f"{DEPTH}-layer sigmoid MLP, Xavier", lambda: _mlp(nn.Sigmoid, False)),
    DemoModel("mlp-relu-he", f"{DEPTH}-layer ReLU MLP, He", lambda: _mlp(nn.ReLU, True)),
    DemoModel("residual", f"{DEPTH} residual blocks, alpha 1", lambda: _residual(1.0)),
    DemoModel(
        "residual-scaled",
        f"{DEPTH} residual blocks, alpha 1/sqrt({DEPTH})",
        lambda: _residual(DEPTH**-0.5),
    ),
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
    deep_options = {k: v for k, v in options.items() if k not in ("steps", "horizon", "burn_in")}
    for demo in DEMO_DEEP_MODELS:
        if progress is not None:
            progress(f"demo: {demo.description}")
        torch.manual_seed(seed)
        results.append((demo, analyze(demo.build(), seed=seed, **deep_options)))
    return results
