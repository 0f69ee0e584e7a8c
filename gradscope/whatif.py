"""Fixes measured, not promised: a fix applied to a copy of the model, the same probe run
again, and each core's numbers before and after.

Applied here: the forget-gate bias of an LSTM and the update-gate bias of a GRU (the total
bias the fix's snippet sets, chunk 1 of the gates), orthogonal recurrent weights, W_hh scaled
to a largest singular value of 1 (spectral norm), and a vanilla RNN swapped for an LSTM or a
GRU of the same sizes (PyTorch's default initialisation, drawn from the seed, with the gate
bias). A fix that changes no Jacobian gradscope can measure on a copy (gradient clipping
bounds updates) says so instead; a swap the model's own forward cannot run is not measured,
and says why.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from gradscope.errors import GradscopeError, first_line
from gradscope.options import AnalysisOptions
from gradscope.probe import Probe
from gradscope.report import FixId, RecurrentCore
from gradscope.theory import suggested_gate_bias

#: Why a fix has no measured effect, where that is its nature.
NOT_MEASURABLE = {
    FixId.CLIP_GRAD_NORM: (
        "clipping bounds the updates of training and changes no Jacobian at these weights: "
        "nothing to measure before training"
    ),
}


@dataclass
class Measured:
    """The cores measured on the fixed copy, and what was changed, in words."""

    cores: list[RecurrentCore]
    change: str


def _set_gate_bias(module: nn.Module, bias: float) -> None:
    """The keeping gate's total bias (chunk 1: LSTM's forget gate of i, f, g, o; GRU's
    update gate of r, z, n) set to ``bias``, all of it in ``bias_ih``."""
    hidden = module.hidden_size
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.startswith("bias_ih"):
                parameter[hidden : 2 * hidden].fill_(bias)
            elif name.startswith("bias_hh"):
                parameter[hidden : 2 * hidden].zero_()


def _gate_bias(kind: str) -> Callable[..., str | None]:
    """Set the keeping gate's total bias of every ``kind`` module among ``cores``."""

    def apply(
        model: nn.Module, cores: list[RecurrentCore], epsilon: float, seed: int = 0
    ) -> str | None:
        distance = max(core.distance for core in cores)
        bias = round(suggested_gate_bias(distance, epsilon), 1)  # as the snippet writes it
        changed = []
        for name in dict.fromkeys(core.name for core in cores if core.cell == kind):
            _set_gate_bias(model.get_submodule(name), bias)
            changed.append(name or "(model)")
        return f"total gate bias {bias:.1f} in {', '.join(changed)}" if changed else None

    return apply


def _orthogonal(
    model: nn.Module, cores: list[RecurrentCore], epsilon: float, seed: int = 0
) -> str | None:
    """Orthogonal recurrent weights (gain 1, drawn from ``seed``) in every module among
    ``cores``."""
    changed = []
    generator = torch.Generator().manual_seed(seed)
    for name in dict.fromkeys(core.name for core in cores if core.cell != "custom"):
        module = model.get_submodule(name)
        with torch.no_grad():
            for parameter_name, parameter in module.named_parameters():
                if parameter_name.startswith("weight_hh"):
                    drawn = torch.empty(parameter.shape, dtype=torch.float64)
                    nn.init.orthogonal_(drawn, generator=generator)
                    parameter.copy_(drawn)
        changed.append(name or "(model)")
    return f"orthogonal W_hh in {', '.join(changed)}" if changed else None


def _spectral_norm(
    model: nn.Module, cores: list[RecurrentCore], epsilon: float, seed: int = 0
) -> str | None:
    """Every W_hh scaled to a largest singular value of 1, as ``spectral_norm`` does at
    these weights (its power iteration converges to the same scale)."""
    changed = []
    for name in dict.fromkeys(core.name for core in cores if core.cell != "custom"):
        module = model.get_submodule(name)
        with torch.no_grad():
            for parameter_name, parameter in module.named_parameters():
                if parameter_name.startswith("weight_hh"):
                    sigma = torch.linalg.matrix_norm(parameter.double(), ord=2)
                    if sigma > 0:
                        parameter.div_(sigma.to(parameter.dtype))
        changed.append(name or "(model)")
    return f"sigma_max(W_hh) = 1 in {', '.join(changed)}" if changed else None


def _gated(kind: str) -> Callable[..., str | None]:
    """Each vanilla RNN among ``cores`` replaced by an LSTM or GRU of the same sizes, layers
    and directions: PyTorch's default initialisation (drawn from ``seed``) and the gate bias
    the ``forget-gate-bias``/``update-gate-bias`` fix would set."""

    def apply(
        model: nn.Module, cores: list[RecurrentCore], epsilon: float, seed: int = 0
    ) -> str | None:
        changed = []
        distance = max(core.distance for core in cores)
        bias = round(suggested_gate_bias(distance, epsilon), 1)
        for name in dict.fromkeys(core.name for core in cores if core.cell.startswith("rnn_")):
            old = model.get_submodule(name)
            if not isinstance(old, nn.RNN):
                continue
            cls = nn.LSTM if kind == "lstm" else nn.GRU
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
            if not name:
                return None  # the model is the RNN itself: nothing to swap it into
            new = new.to(device=old.weight_ih_l0.device, dtype=old.weight_ih_l0.dtype)
            _set_gate_bias(new, bias)
            model.set_submodule(name, new)
            changed.append(f"{name} as nn.{cls.__name__} (total gate bias {bias:.1f})")
        return f"{', '.join(changed)}" if changed else None

    return apply


#: How each fix gradscope can measure is applied to a copy.
APPLY = {
    FixId.FORGET_GATE_BIAS: _gate_bias("lstm"),
    FixId.UPDATE_GATE_BIAS: _gate_bias("gru"),
    FixId.ORTHOGONAL_INIT: _orthogonal,
    FixId.SPECTRAL_NORM: _spectral_norm,
    FixId.USE_LSTM: _gated("lstm"),
    FixId.USE_GRU: _gated("gru"),
}


def measure_fix(
    model: nn.Module,
    probe: Probe,
    options: AnalysisOptions,
    fix_id: str,
    cores: list[RecurrentCore],
) -> Measured | None:
    """The cores of ``model`` with ``fix_id`` applied to a copy (for ``cores``), measured on
    the same probe with the same options; None when gradscope cannot apply it."""
    from gradscope.recurrent.measure import measure_recurrent

    apply = APPLY.get(FixId(fix_id))
    if apply is None:
        return None
    fixed = copy.deepcopy(model)
    change = apply(fixed, cores, options.epsilon, options.seed)
    if change is None:
        return None
    try:
        with torch.enable_grad():
            measured = measure_recurrent(fixed, probe, options)
    except GradscopeError:
        raise
    except Exception as error:  # the model's own code, on the fixed copy
        raise GradscopeError(
            f"the model with {change} does not run ({type(error).__name__}: {first_line(error)})"
        ) from None
    return Measured(measured.cores, change)
