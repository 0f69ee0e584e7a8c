"""Model classes that checkpoints in the format tests are saved from (importable as --model)."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn


class SpeakerEncoder(nn.Module):
    """A 3-layer LSTM over feature frames with a linear embedding head (batch-first)."""

    def __init__(self, n_mels: int = 12, hidden: int = 16, embedding: int = 8) -> None:
        super().__init__()
        self.lstm = nn.LSTM(n_mels, hidden, 3, batch_first=True)
        self.linear = nn.Linear(hidden, embedding)

    def forward(self, frames: Tensor) -> Tensor:
        return self.linear(self.lstm(frames)[0][:, -1])


class Tagger(nn.Module):
    """Embedding -> bidirectional GRU -> per-step logits, returned in a dict."""

    def __init__(self, vocab: int = 30, width: int = 6) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.gru = nn.GRU(width, width, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * width, vocab)

    def forward(self, tokens: Tensor) -> dict[str, Tensor]:
        states = self.gru(self.embed(tokens))[0]
        return {"mask": tokens > 0, "features": states, "logits": self.head(states)}


@dataclasses.dataclass
class Output:
    """A model-output object, as libraries return them."""

    hidden: Tensor
    logits: Tensor


class ObjectOutput(nn.Module):
    """A GRU whose forward returns a dataclass holding ``hidden`` and ``logits``."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(3, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Output:
        hidden = self.gru(x)[0]
        return Output(hidden, self.head(hidden))


class ConvFrontEnd(nn.Module):
    """Conv1d over (batch, channels, length), then an LSTM over the length axis."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 3, padding=1)
        self.lstm = nn.LSTM(6, 5, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.lstm(torch.relu(self.conv(x)).transpose(1, 2))[0]


class Wrapped(nn.Module):
    """A LightningModule-like wrapper: the network sits under ``net``."""

    def __init__(self, n_mels: int = 12, hidden: int = 16) -> None:
        super().__init__()
        self.net = SpeakerEncoder(n_mels, hidden)
        self.loss = nn.CrossEntropyLoss(weight=torch.ones(3))

    def forward(self, frames: Tensor) -> Tensor:
        return self.net(frames)


class DictOut(nn.Module):
    """A GRU whose forward returns {"hidden", "logits"} (scriptable)."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(3, 5, batch_first=True)
        self.head = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        hidden = self.gru(x)[0]
        return {"hidden": hidden, "logits": self.head(hidden)}


class Forwarding(nn.Module):
    """A constructor that forwards ``**kwargs`` to its base, as many LightningModules do."""

    def __init__(self, hidden: int = 4, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rnn = nn.RNN(3, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return self.rnn(x)[0]
