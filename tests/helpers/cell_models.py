"""Recurrent models as research and library code writes them: cells with elapsed times, masks,
dict states and context vectors, looped by the model's own Python code.

Each loop keeps what it passed to the cell at each step in ``self.steps`` (the arguments
other than the state, and the state) and the state nodes it got back in ``self.states``,
so that tests can take the brute-force twin from the module itself.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class ContinuousTimeCell(nn.Module):
    """A liquid-style cell: ``h' = h + dt (-h / tau + tanh(W x + U h))``, ``dt`` the time
    elapsed at that step; it returns ``(readout, h')`` as continuous-time libraries do."""

    def __init__(self, features: int, hidden: int, outputs: int) -> None:
        super().__init__()
        self.inp = nn.Linear(features, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.log_tau = nn.Parameter(torch.zeros(hidden))
        self.readout = nn.Linear(hidden, outputs)

    def forward(self, input: Tensor, states: Tensor, elapsed: Tensor) -> tuple[Tensor, Tensor]:
        tau = F.softplus(self.log_tau) + 0.5
        change = -states / tau + torch.tanh(self.inp(input) + self.rec(states))
        h = states + elapsed.reshape(-1, 1) * change
        return self.readout(h), h


class ContinuousTimeNet(nn.Module):
    """Loops the cell as ``cell.forward(x_t, h, elapsed_t)`` (module hooks never see such a
    call). ``shared=True``: one elapsed time for the whole batch at each step (a 0-d tensor),
    else one per sequence (B,)."""

    def __init__(self, features: int = 4, hidden: int = 6, shared: bool = False) -> None:
        super().__init__()
        self.cell = ContinuousTimeCell(features, hidden, 2)
        self.hidden, self.shared = hidden, shared
        self.steps: list = []
        self.states: list[Tensor] = []

    def elapsed(self, x: Tensor, t: int) -> Tensor:
        """Irregular sampling: the time since the last observation."""
        if self.shared:
            return x.new_tensor(0.3 + 0.05 * (t % 4))
        return 0.2 + 0.1 * torch.sigmoid(x[:, t, 0])

    def forward(self, x: Tensor) -> Tensor:
        h = x.new_zeros(x.shape[0], self.hidden)
        self.steps, self.states, outputs = [], [], []
        for t in range(x.shape[1]):
            elapsed = self.elapsed(x, t)
            self.steps.append((x[:, t], h, elapsed))
            y, h = self.cell.forward(x[:, t], h, elapsed)
            self.states.append(h)
            outputs.append(y)
        return torch.stack(outputs, dim=1)


class DictStateCell(nn.Module):
    """An LSTM-like cell whose state is a dict ``{"h", "c"}``."""

    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.gates = nn.Linear(features + hidden, 3 * hidden)

    def forward(self, x: Tensor, state: dict[str, Tensor]) -> dict[str, Tensor]:
        h, c = state["h"], state["c"]
        keep, write, out = self.gates(torch.cat((x, h), dim=-1)).chunk(3, dim=-1)
        c = torch.sigmoid(keep + 1.0) * c + torch.sigmoid(write) * torch.tanh(x.sum(-1, True))
        return {"h": torch.sigmoid(out) * torch.tanh(c), "c": c}


class DictStateNet(nn.Module):
    """Loops the dict-state cell and reads out every h."""

    def __init__(self, features: int = 4, hidden: int = 5) -> None:
        super().__init__()
        self.cell = DictStateCell(features, hidden)
        self.head = nn.Linear(hidden, 2)
        self.hidden = hidden
        self.steps: list = []
        self.states: list = []

    def forward(self, x: Tensor) -> Tensor:
        zeros = x.new_zeros(x.shape[0], self.hidden)
        state = {"h": zeros, "c": zeros}
        self.steps, self.states, outputs = [], [], []
        for x_t in x.unbind(1):
            self.steps.append((x_t, state))
            state = self.cell(x_t, state)
            self.states.append(state)
            outputs.append(self.head(state["h"]))
        return torch.stack(outputs, dim=1)


class MaskedCell(nn.Module):
    """A cell that keeps its state where the mask is off: ``cell(x, h, mask)``."""

    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.inp = nn.Linear(features, hidden)
        self.rec = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor, h: Tensor, mask: Tensor) -> Tensor:
        return torch.where(mask[:, None], torch.tanh(self.inp(x) + self.rec(h)), h)


class MaskedNet(nn.Module):
    """Loops the masked cell; the mask (bool, per sequence) comes from the input."""

    def __init__(self, features: int = 4, hidden: int = 6) -> None:
        super().__init__()
        self.cell = MaskedCell(features, hidden)
        self.hidden = hidden
        self.steps: list = []
        self.states: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        h = x.new_zeros(x.shape[0], self.hidden)
        self.steps, self.states, outputs = [], [], []
        for x_t in x.unbind(1):
            mask = x_t[:, 0] > -0.5
            self.steps.append((x_t, h, mask))
            h = self.cell(x_t, h, mask=mask)
            self.states.append(h)
            outputs.append(h)
        return torch.stack(outputs, dim=1)


class ContextDecoder(nn.Module):
    """A Python loop over ``nn.GRUCell`` whose input is ``cat(x_t, context)``, the context
    a summary of the whole sequence, as attention-free decoders step one."""

    def __init__(self, features: int = 4, context: int = 3, hidden: int = 6) -> None:
        super().__init__()
        self.summary = nn.Linear(features, context)
        self.cell = nn.GRUCell(features + context, hidden)
        self.hidden = hidden
        self.steps: list = []
        self.states: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        context = torch.tanh(self.summary(x.mean(dim=1)))
        h = x.new_zeros(x.shape[0], self.hidden)
        self.steps, self.states, outputs = [], [], []
        for x_t in x.unbind(1):
            drive = torch.cat((x_t, context), dim=-1)
            self.steps.append((drive, h))
            h = self.cell(drive, h)
            self.states.append(h)
            outputs.append(h)
        return torch.stack(outputs, dim=1)


class SharedProjection(nn.Module):
    """One Linear applied at every step to that step's input (never to its own output), then
    a GRU: the Linear is reused, not a cell."""

    def __init__(self, features: int = 4, hidden: int = 6) -> None:
        super().__init__()
        self.project = nn.Linear(features, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        projected = torch.stack([torch.tanh(self.project(x_t)) for x_t in x.unbind(1)], dim=1)
        return self.gru(projected)[0]


class CountingCell(nn.Module):
    """A cell called with the step number as a Python int: not a tensor gradscope can hold."""

    def __init__(self, features: int = 4, hidden: int = 6) -> None:
        super().__init__()
        self.inp = nn.Linear(features, hidden)
        self.rec = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor, h: Tensor, step: int) -> Tensor:
        return torch.tanh(self.inp(x) + self.rec(h) * (1 + step % 2))


class CountingNet(nn.Module):
    """Loops the counting cell."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = CountingCell()

    def forward(self, x: Tensor) -> Tensor:
        h = x.new_zeros(x.shape[0], 6)
        for t, x_t in enumerate(x.unbind(1)):
            h = self.cell(x_t, h, t)
        return h


class RawCell(nn.Module):
    """A continuous-time cell on raw parameters (no Linear to read the input size from),
    returning ``(output, state)`` as one tensor twice, as closed-form continuous-time cells do."""

    def __init__(self, features: int = 3, units: int = 7) -> None:
        super().__init__()
        self.sensory = nn.Parameter(torch.randn(features, units) * 0.5)
        self.recurrent = nn.Parameter(torch.randn(units, units) * 0.3)

    def forward(self, input: Tensor, hx: Tensor, ts: float = 1.0) -> tuple[Tensor, Tensor]:
        h = hx + ts * (-hx + torch.tanh(input @ self.sensory + hx @ self.recurrent))
        return h, h


class RawCellNet(nn.Module):
    """Loops the raw cell with ``rnn_cell.forward(x_t, h, 0.5)``; the cell is its only module."""

    def __init__(self, features: int = 3) -> None:
        super().__init__()
        self.rnn_cell = RawCell(features)
        self.steps: list = []
        self.states: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        h = x.new_zeros(x.shape[0], 7)
        self.steps, self.states, outputs = [], [], []
        for t in range(x.shape[1]):
            self.steps.append((x[:, t], h))
            out, h = self.rnn_cell.forward(x[:, t], h, 0.5)
            self.states.append(h)
            outputs.append(out)
        return torch.stack(outputs, dim=1)


class ConcatFirst(nn.Module):
    """A tanh cell whose one Linear reads ``cat(x, h)``, registered before anything else."""

    def __init__(self, features: int = 6, hidden: int = 5) -> None:
        super().__init__()
        self.cell_layer = nn.Linear(features + hidden, hidden)
        self.hidden = hidden

    def forward(self, x: Tensor) -> Tensor:
        h = x.new_zeros(x.shape[0], self.hidden)
        for x_t in x.unbind(1):
            h = torch.tanh(self.cell_layer(torch.cat((x_t, h), dim=-1)))
        return h


class TutorialRNN(nn.Module):
    """The "classifying names" tutorial's RNN: one step, ``(output, hidden)`` back."""

    def __init__(self, features: int = 10, hidden: int = 12) -> None:
        super().__init__()
        self.hidden_size = hidden
        self.i2h = nn.Linear(features + hidden, hidden)
        self.h2o = nn.Linear(hidden, 4)

    def forward(self, input: Tensor, hidden: Tensor) -> tuple[Tensor, Tensor]:
        hidden = torch.tanh(self.i2h(torch.cat((input, hidden), 1)))
        return self.h2o(hidden), hidden


class TimeMajorLoop(nn.Module):
    """Loops the tutorial RNN over the first axis of its input, (steps, batch, features)."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = TutorialRNN()

    def forward(self, line: Tensor) -> Tensor:
        hidden = line.new_zeros(line.size(1), self.rnn.hidden_size)
        for i in range(line.size(0)):
            output, hidden = self.rnn(line[i], hidden)
        return output


class MixedMemory(nn.Module):
    """A cell whose state another module changes between steps (as a mixed-memory LSTM
    stepped before a continuous-time cell does): no call reads what the one before returned."""

    def __init__(self, features: int = 4, hidden: int = 6) -> None:
        super().__init__()
        self.cell = TanhPair(features, hidden)
        self.mix = nn.Linear(hidden, hidden)
        self.hidden = hidden

    def forward(self, x: Tensor) -> Tensor:
        h, outputs = x.new_zeros(x.shape[0], self.hidden), []
        for x_t in x.unbind(1):
            y, h = self.cell(x_t, torch.tanh(self.mix(h)))
            outputs.append(y)
        return torch.stack(outputs, dim=1)


class TanhPair(nn.Module):
    """A tanh cell returning ``(output, state)``: a readout and the next state."""

    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.inp = nn.Linear(features, hidden)
        self.rec = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        h = torch.tanh(self.inp(x) + self.rec(h))
        return self.out(h), h


class CharRNN(nn.Module):
    """A char-RNN that embeds each step's ids inside its loop."""

    def __init__(self, vocab: int = 20, width: int = 8, hidden: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.cell = nn.LSTMCell(width, hidden)
        self.out = nn.Linear(hidden, vocab)
        self.hidden = hidden

    def forward(self, ids: Tensor) -> Tensor:
        h = torch.zeros(ids.shape[0], self.hidden, dtype=self.out.weight.dtype)
        c, outputs = torch.zeros_like(h), []
        for t in range(ids.shape[1]):
            h, c = self.cell(self.emb(ids[:, t]), (h, c))
            outputs.append(self.out(h))
        return torch.stack(outputs, dim=1)


class BufferLoop(nn.Module):
    """A layer that loops over time on its own weight and writes each state into a
    preallocated tensor (``out[t] = h``), as fused-kernel fallbacks do."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.inp = nn.Linear(width, width)
        self.recurrent = nn.Parameter(torch.randn(width, width) * 0.3)
        self.head = nn.Linear(width, 2)

    def forward(self, x: Tensor) -> Tensor:
        drive = self.inp(self.norm(x))
        h = x.new_zeros(x.shape[0], x.shape[2])
        out = x.new_zeros(x.shape[1], x.shape[0], x.shape[2])
        for t in range(x.shape[1]):
            h = torch.tanh(drive[:, t] + h @ self.recurrent)
            out[t] = h
        return self.head(out.transpose(0, 1))


class SingleOnly(nn.Module):
    """A loop that makes its zero state in float32 whatever the weights: it runs in float32
    only."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.GRUCell(4, 6)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.zeros(x.shape[0], 6)
        for x_t in x.unbind(1):
            h = self.cell(x_t, h)
        return h
