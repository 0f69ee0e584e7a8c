"""Fixes measured, not promised: a fix applied to a copy of the model, the same probe run
again, and each core's numbers before and after.

Applied here: the forget-gate bias of an LSTM and the update-gate bias of a GRU (the total
bias the fix's snippet sets, chunk 1 of the gates), and orthogonal recurrent weights. A fix
that changes no Jacobian gradscope can measure on a copy (gradient clipping bounds updates)
says so instead.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

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


def _gate_bias(kind: str) -> Callable[..., str | None]:
    """Set the keeping gate's total bias of every ``kind`` module among ``cores``."""

    def apply(
        model: nn.Module, cores: list[RecurrentCore], epsilon: float, seed: int = 0
    ) -> str | None:
        distance = max(core.distance for core in cores)
        bias = round(suggested_gate_bias(distance, epsilon), 1)  # as the snippet writes it
        changed = []
        for name in dict.fromkeys(core.name for core in cores if core.cell == kind):
            module = model.get_submodule(name)
            hidden = module.hidden_size
            with torch.no_grad():
                for parameter_name, parameter in module.named_parameters():
                    if parameter_name.startswith("bias_ih"):
                        parameter[hidden : 2 * hidden].fill_(bias)
                    elif parameter_name.startswith("bias_hh"):
                        parameter[hidden : 2 * hidden].zero_()
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


#: How each fix gradscope can measure is applied to a copy.
APPLY = {
    FixId.FORGET_GATE_BIAS: _gate_bias("lstm"),
    FixId.UPDATE_GATE_BIAS: _gate_bias("gru"),
    FixId.ORTHOGONAL_INIT: _orthogonal,
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
    with torch.enable_grad():
        measured = measure_recurrent(fixed, probe, options)
    return Measured(measured.cores, change)
