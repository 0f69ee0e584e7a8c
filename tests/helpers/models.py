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


def copy_cell_weights(custom: nn.Module, cell: nn.Module) -> nn.Module:
    """Copy a built-in cell's weights into a custom cell's ``input`` and ``recurrent`` Linears."""
    with torch.no_grad():
        custom.input.weight.copy_(cell.weight_ih)
        custom.input.bias.copy_(cell.bias_ih)
        custom.recurrent.weight.copy_(cell.weight_hh)
        custom.recurrent.bias.copy_(cell.bias_hh)
    return custom


class TanhCell(nn.Module):
    """A custom cell that reimplements ``nn.RNNCell``: ``h' = tanh(W x + b_ih + U h + b_hh)``."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input = nn.Linear(input_size, hidden_size)
        self.recurrent = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: Tensor, h: Tensor | None = None) -> Tensor:
        if h is None:
            h = x.new_zeros(x.shape[0], self.recurrent.in_features)
        return torch.tanh(self.input(x) + self.recurrent(h))

    def load_from(self, cell: nn.RNNCell) -> TanhCell:
        """Take the weights of a built-in cell."""
        return copy_cell_weights(self, cell)


class PairLSTMCell(nn.Module):
    """A custom cell that reimplements ``nn.LSTMCell`` on a ``(h, c)`` tuple state."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.input = nn.Linear(input_size, 4 * hidden_size)
        self.recurrent = nn.Linear(hidden_size, 4 * hidden_size)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None):
        if state is None:
            zeros = x.new_zeros(x.shape[0], self.hidden_size)
            state = (zeros, zeros)
        h, c = state
        i, f, g, o = (self.input(x) + self.recurrent(h)).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def load_from(self, cell: nn.LSTMCell) -> PairLSTMCell:
        """Take the weights of a built-in cell."""
        return copy_cell_weights(self, cell)


class GatedNormCell(nn.Module):
    """A cell no built-in expresses: ``h' = LayerNorm(tanh(W x + U h)) * sigmoid(V h)``."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input = nn.Linear(input_size, hidden_size, bias=False)
        self.recurrent = nn.Linear(hidden_size, hidden_size, bias=False)
        self.gate = nn.Linear(hidden_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        candidate = self.norm(torch.tanh(self.input(x) + self.recurrent(h)))
        return candidate * torch.sigmoid(self.gate(h))


class StateLoop(nn.Module):
    """Runs a cell from a zero state over a sequence and returns every h.

    Batch-first (B, T, F), or unbatched (T, F) with ``unbatched``; ``keyword`` passes the state
    as ``h=``.
    """

    def __init__(
        self, cell: nn.Module, hidden_size: int, unbatched: bool = False, keyword: bool = False
    ) -> None:
        super().__init__()
        self.cell = cell
        self.hidden_size = hidden_size
        self.unbatched = unbatched
        self.keyword = keyword

    def forward(self, x: Tensor) -> Tensor:
        time = 0 if self.unbatched else 1
        h = x.new_zeros(*x.shape[:time], self.hidden_size)
        outputs = []
        for t in range(x.shape[time]):
            x_t = x.select(time, t)
            h = self.cell(x_t, h=h) if self.keyword else self.cell(x_t, h)
            outputs.append(h)
        return torch.stack(outputs, dim=time)
