"""The little model zoo the tests share: every recurrent flavour PyTorch has, in float64."""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: Bare recurrent modules: every cell kind, multi-layer, bidirectional, proj_size, batch_first.
MODULES = {
    "rnn_tanh": lambda: nn.RNN(4, 6),
    "rnn_relu": lambda: nn.RNN(4, 6, nonlinearity="relu"),
    "lstm": lambda: nn.LSTM(4, 6),
    "lstm_proj": lambda: nn.LSTM(4, 6, proj_size=3),
    "gru": lambda: nn.GRU(4, 6),
    "rnn_2layer_nobias": lambda: nn.RNN(4, 6, num_layers=2, bias=False),
    "gru_bidir_2layer_bf": lambda: nn.GRU(4, 5, num_layers=2, bidirectional=True, batch_first=True),
    "lstm_proj_bidir_2layer_bf": lambda: nn.LSTM(
        4, 6, num_layers=2, proj_size=3, bidirectional=True, batch_first=True
    ),
}

CELLS = {
    "rnn_cell": lambda: nn.RNNCell(4, 6),
    "rnn_relu_cell": lambda: nn.RNNCell(4, 6, nonlinearity="relu"),
    "lstm_cell": lambda: nn.LSTMCell(4, 6),
    "gru_cell": lambda: nn.GRUCell(4, 6),
}


def build(factory, seed: int = 0) -> nn.Module:
    """A seeded float64 instance."""
    torch.manual_seed(seed)
    return factory().double()


class CellLoop(nn.Module):
    """A model that runs a cell over a batch-first sequence and returns every h."""

    def __init__(self, cell: nn.Module) -> None:
        super().__init__()
        self.cell = cell

    def forward(self, x: Tensor) -> Tensor:
        state = None
        outputs = []
        for t in range(x.shape[1]):
            state = self.cell(x[:, t], state)
            outputs.append(state[0] if isinstance(state, tuple) else state)
        return torch.stack(outputs, dim=1)


class Classifier(nn.Module):
    """An encoder read out from its last output: the shape most users have."""

    def __init__(self, encoder: nn.Module, classes: int = 3) -> None:
        super().__init__()
        self.encoder = encoder
        directions = 2 if encoder.bidirectional else 1
        self.head = nn.Linear(directions * encoder.hidden_size, classes)

    def forward(self, x: Tensor) -> Tensor:
        output, _ = self.encoder(x)
        index = 1 if self.encoder.batch_first else 0
        return self.head(output.select(index, -1))


def orthogonal(n: int, seed: int = 0) -> Tensor:
    """A seeded random orthogonal matrix (float64)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))[0]


def rnn_with_recurrence(weight_hh: Tensor, nonlinearity: str = "tanh") -> nn.RNN:
    """A float64 RNN at the origin: zero input weights and biases, the given W_hh."""
    n = weight_hh.shape[0]
    rnn = nn.RNN(n, n, nonlinearity=nonlinearity).double()
    with torch.no_grad():
        for parameter in rnn.parameters():
            parameter.zero_()
        rnn.weight_hh_l0.copy_(weight_hh)
    return rnn
