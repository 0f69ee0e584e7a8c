"""Fixes over time applied to a copy of the model: each takes the copy, the cores the fix is
for, the tolerance epsilon and the seed, changes the copy in place and says what it changed
(or raises :class:`~gradscope.whatif.apply.NotApplied`).

The forget-gate bias of an LSTM and the update-gate bias of a GRU (the total bias the fix's
snippet sets, chunk 1 of the gates), orthogonal recurrent weights, W_hh scaled to a largest
singular value of 1 (spectral norm), and a vanilla RNN swapped for an LSTM or a GRU of the
same sizes (PyTorch's default initialisation, drawn from the seed, with the gate bias), and
a custom cell wrapped so that it adds to its state (``s + f(x, s)``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from gradscope.diagnosis.rules import plain_cell_call
from gradscope.report import FixId, RecurrentCore
from gradscope.theory import suggested_gate_bias
from gradscope.whatif.apply import NotApplied, seeded

#: An applier over time: (copy, cores, epsilon, seed) -> what it changed.
OverTime = Callable[[nn.Module, list[RecurrentCore], float, int], str]


def _modules(cores: list[RecurrentCore], keep: Callable[[RecurrentCore], bool]) -> list[str]:
    """The module path of each core ``keep`` accepts, once each."""
    return list(dict.fromkeys(core.name for core in cores if keep(core)))


def _named(changed: list[str], what: str) -> str:
    if not changed:
        raise NotApplied(f"no module {what}")
    return ", ".join(name or "(model)" for name in changed)


def set_gate_bias(module: nn.Module, bias: float) -> None:
    """The keeping gate's total bias (chunk 1: LSTM's forget gate of i, f, g, o; GRU's
    update gate of r, z, n) set to ``bias``, all of it in ``bias_ih``."""
    hidden = module.hidden_size
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.startswith("bias_ih"):
                parameter[hidden : 2 * hidden].fill_(bias)
            elif name.startswith("bias_hh"):
                parameter[hidden : 2 * hidden].zero_()


def _rounded_gate_bias(cores: list[RecurrentCore], epsilon: float) -> float:
    """The gate bias the snippet writes: for the longest distance among ``cores``."""
    return round(suggested_gate_bias(max(core.distance for core in cores), epsilon), 1)


def _gate_bias(kind: str) -> OverTime:
    """Set the keeping gate's total bias of every ``kind`` module among the cores."""

    def apply(model: nn.Module, cores: list[RecurrentCore], epsilon: float, seed: int) -> str:
        bias = _rounded_gate_bias(cores, epsilon)
        names = _modules(cores, lambda core: core.cell == kind)
        for name in names:
            set_gate_bias(model.get_submodule(name), bias)
        return f"total gate bias {bias:.1f} in {_named(names, f'of kind {kind}')}"

    return apply


def _each_recurrent_weight(
    model: nn.Module, cores: list[RecurrentCore], change: Callable[[torch.Tensor], None]
) -> str:
    """``change`` every W_hh of the built-in modules among the cores; their names."""
    names = _modules(cores, lambda core: core.cell != "custom")
    for name in names:
        with torch.no_grad():
            for parameter_name, parameter in model.get_submodule(name).named_parameters():
                if parameter_name.startswith("weight_hh"):
                    change(parameter)
    return _named(names, "with a W_hh gradscope can set (a custom cell's weights are its own)")


def _orthogonal(model: nn.Module, cores: list[RecurrentCore], epsilon: float, seed: int) -> str:
    """Orthogonal recurrent weights (gain 1, drawn from ``seed``)."""
    generator = torch.Generator().manual_seed(seed)

    def draw(parameter: torch.Tensor) -> None:
        parameter.copy_(seeded(nn.init.orthogonal_, parameter, generator))

    return f"orthogonal W_hh in {_each_recurrent_weight(model, cores, draw)}"


def _spectral_norm(model: nn.Module, cores: list[RecurrentCore], epsilon: float, seed: int) -> str:
    """Every W_hh scaled to a largest singular value of 1, as ``spectral_norm`` does at these
    weights (its power iteration converges to the same scale)."""

    def scale(parameter: torch.Tensor) -> None:
        sigma = torch.linalg.matrix_norm(parameter.double(), ord=2)
        if sigma > 0:
            parameter.div_(sigma.to(parameter.dtype))

    return f"sigma_max(W_hh) = 1 in {_each_recurrent_weight(model, cores, scale)}"


def _gated(kind: str) -> OverTime:
    """Each vanilla RNN among the cores replaced by an LSTM or GRU of the same sizes, layers
    and directions: PyTorch's default initialisation (drawn from ``seed``) and the gate bias
    the ``forget-gate-bias``/``update-gate-bias`` fix would set."""

    def apply(model: nn.Module, cores: list[RecurrentCore], epsilon: float, seed: int) -> str:
        cls = nn.LSTM if kind == "lstm" else nn.GRU
        bias = _rounded_gate_bias(cores, epsilon)
        changed = []
        for name in _modules(cores, lambda core: core.cell.startswith("rnn_")):
            old = model.get_submodule(name)
            if not isinstance(old, nn.RNN):
                continue
            if not name:
                raise NotApplied(
                    f"the model is the nn.RNN itself: build an nn.{cls.__name__} in its place"
                )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                new = cls(
                    old.input_size,
                    old.hidden_size,
                    num_layers=old.num_layers,
                    bias=old.bias,
                    batch_first=old.batch_first,
                    bidirectional=old.bidirectional,
                )
            new = new.to(device=old.weight_ih_l0.device, dtype=old.weight_ih_l0.dtype)
            set_gate_bias(new, bias)
            model.set_submodule(name, new)
            changed.append(f"{name} as nn.{cls.__name__} (total gate bias {bias:.1f})")
        if not changed:
            raise NotApplied("no nn.RNN to swap")
        return ", ".join(changed)

    return apply


class ResidualCell(nn.Module):
    """``s' = s + f(x, s)`` for a cell called as ``cell(x, state) -> state`` (a tensor or a
    tuple of tensors), as the ``residual-connections`` snippet writes it; no state yet (the
    first step of a model that passes ``None``): the cell's own output."""

    def __init__(self, cell: nn.Module) -> None:
        super().__init__()
        self.cell = cell

    def forward(self, x: torch.Tensor, state: object = None) -> object:
        update = self.cell(x, state)
        if state is None:
            return update
        if torch.is_tensor(state):
            return state + update
        return type(state)(s + u for s, u in zip(state, update, strict=True))


def _residual_cells(model: nn.Module, cores: list[RecurrentCore], epsilon: float, seed: int) -> str:
    """Each custom cell called as ``cell(x, state) -> state`` wrapped in a ResidualCell."""
    custom = [core for core in cores if core.cell == "custom"]
    if any(not plain_cell_call(core) for core in custom):
        raise NotApplied(
            "the cell is not called as cell(x, state) -> state, so where the skip adds is the "
            "model's code to say"
        )
    names = _modules(custom, lambda core: bool(core.name))
    for name in names:
        model.set_submodule(name, ResidualCell(model.get_submodule(name)))
    return f"s + f(x, s) around {_named(names, 'that is a custom cell inside the model')}"


#: How each fix over time is applied to a copy.
OVER_TIME: dict[FixId, OverTime] = {
    FixId.FORGET_GATE_BIAS: _gate_bias("lstm"),
    FixId.UPDATE_GATE_BIAS: _gate_bias("gru"),
    FixId.ORTHOGONAL_INIT: _orthogonal,
    FixId.SPECTRAL_NORM: _spectral_norm,
    FixId.USE_LSTM: _gated("lstm"),
    FixId.USE_GRU: _gated("gru"),
    FixId.RESIDUAL_CONNECTIONS: _residual_cells,
}
