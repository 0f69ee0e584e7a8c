"""Exact functional steps of PyTorch's recurrent cells, on a flat state vector.

Every core is stepped as ``s' = step(s, u)`` where ``s`` is the full state (``h`` for RNN and
GRU, ``cat(h, c)`` for LSTM) and ``u`` the input drive ``x W_ih^T + b``, computed for all time
steps at once. The same function drives the unroll, the Jacobians and the Lyapunov exponents,
so every number refers to one and the same map.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}


@dataclass(frozen=True)
class CellSpec:
    """The shape of one recurrent map: which cell, and its sizes."""

    kind: str
    input_size: int
    hidden_size: int
    proj_size: int = 0

    @property
    def output_size(self) -> int:
        """Size of ``h``: the projection size when an LSTM projects, else the hidden size."""
        return self.proj_size or self.hidden_size

    @property
    def state_size(self) -> int:
        """Size of the full state: ``h`` plus ``c`` for an LSTM."""
        if self.kind == "lstm":
            return self.output_size + self.hidden_size
        return self.hidden_size


@dataclass(frozen=True)
class CellWeights:
    """One (layer, direction)'s parameters, as PyTorch names them without the suffix."""

    weight_ih: Tensor
    weight_hh: Tensor
    bias_ih: Tensor | None = None
    bias_hh: Tensor | None = None
    weight_hr: Tensor | None = None

    def detached(self) -> CellWeights:
        """The same weights cut from the autograd graph (for Jacobians of the state map)."""
        return CellWeights(*(None if w is None else w.detach() for w in self._tensors()))

    def _tensors(self) -> tuple[Tensor | None, ...]:
        return (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, self.weight_hr)


def module_kind(module: nn.Module) -> str:
    """The cell kind of an ``nn.RNN``/``LSTM``/``GRU`` module or cell."""
    if isinstance(module, (nn.LSTM, nn.LSTMCell)):
        return "lstm"
    if isinstance(module, (nn.GRU, nn.GRUCell)):
        return "gru"
    return "rnn_relu" if module.nonlinearity == "relu" else "rnn_tanh"


def layer_weights(module: nn.Module, layer: int | None, reverse: bool) -> CellWeights:
    """The parameters of one (layer, direction) of a module, or of a cell (``layer=None``)."""
    suffix = "" if layer is None else f"_l{layer}" + ("_reverse" if reverse else "")

    def get(name: str) -> Tensor | None:
        return getattr(module, name + suffix, None)

    return CellWeights(
        weight_ih=get("weight_ih"),
        weight_hh=get("weight_hh"),
        bias_ih=get("bias_ih") if getattr(module, "bias", True) else None,
        bias_hh=get("bias_hh") if getattr(module, "bias", True) else None,
        weight_hr=get("weight_hr") if getattr(module, "proj_size", 0) else None,
    )


def input_drive(spec: CellSpec, weights: CellWeights, x: Tensor) -> Tensor:
    """``u = x W_ih^T + b_ih`` (+ ``b_hh`` except for GRU, whose ``b_hn`` sits inside ``r *``)."""
    u = F.linear(x, weights.weight_ih, weights.bias_ih)
    if spec.kind != "gru" and weights.bias_hh is not None:
        u = u + weights.bias_hh
    return u


def step_function(spec: CellSpec, weights: CellWeights) -> Callable[[Tensor, Tensor], Tensor]:
    """The state map ``s' = step(s, u)`` of one cell; works batched or on single vectors."""
    w_hh, b_hh, w_hr = weights.weight_hh, weights.bias_hh, weights.weight_hr
    out = spec.output_size

    if spec.kind in ("rnn_tanh", "rnn_relu"):
        activation = torch.tanh if spec.kind == "rnn_tanh" else torch.relu

        def rnn_step(s: Tensor, u: Tensor) -> Tensor:
            return activation(u + F.linear(s, w_hh))

        return rnn_step

    if spec.kind == "lstm":

        def lstm_step(s: Tensor, u: Tensor) -> Tensor:
            h, c = s[..., :out], s[..., out:]
            i, f, g, o = (u + F.linear(h, w_hh)).chunk(4, dim=-1)
            c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h_next = torch.sigmoid(o) * torch.tanh(c_next)
            if w_hr is not None:
                h_next = F.linear(h_next, w_hr)
            return torch.cat((h_next, c_next), dim=-1)

        return lstm_step

    if spec.kind == "gru":

        def gru_step(s: Tensor, u: Tensor) -> Tensor:
            u_r, u_z, u_n = u.chunk(3, dim=-1)
            g_r, g_z, g_n = F.linear(s, w_hh, b_hh).chunk(3, dim=-1)
            r = torch.sigmoid(u_r + g_r)
            z = torch.sigmoid(u_z + g_z)
            n = torch.tanh(u_n + r * g_n)
            return (1 - z) * n + z * s

        return gru_step

    raise ValueError(f"unknown cell kind {spec.kind!r}")


def gate_values(spec: CellSpec, weights: CellWeights, s: Tensor, u: Tensor) -> Tensor | None:
    """The gate that keeps the state: LSTM forget gate ``f``, GRU update gate ``z``."""
    if spec.kind == "lstm":
        recurrent = F.linear(s[..., : spec.output_size], weights.weight_hh)
    elif spec.kind == "gru":
        recurrent = F.linear(s, weights.weight_hh, weights.bias_hh)
    else:
        return None
    gates = GATES[spec.kind]
    return torch.sigmoid(u.chunk(gates, dim=-1)[1] + recurrent.chunk(gates, dim=-1)[1])


def gate_bias(spec: CellSpec, weights: CellWeights) -> Tensor | None:
    """The total bias of the keeping gate (``b_ih + b_hh`` on the forget or update slice).

    Both sit at chunk 1: PyTorch orders LSTM gates (i, f, g, o) and GRU gates (r, z, n).
    """
    if spec.kind not in ("lstm", "gru") or weights.bias_ih is None:
        return None
    return (weights.bias_ih + weights.bias_hh).chunk(GATES[spec.kind])[1]
