"""States and drives of a module's first layer along a gaussian input, stepped by gradscope's
functional cell: the rows matrix-free and dense spectra are compared on."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from gradscope.recurrent.cells import (
    CellSpec,
    CellWeights,
    input_drive,
    layer_weights,
    module_kind,
    step_function,
)


class Trajectory(NamedTuple):
    spec: CellSpec
    weights: CellWeights
    step: object
    states: Tensor
    drives: Tensor


def trajectory(module: nn.Module, steps: int, skip: int = 0) -> Trajectory:
    """The states before each step from a zero state, and the drives, of ``module``'s first
    layer on a gaussian input of ``steps`` steps drawn from torch's global generator (seed it
    first); the first ``skip`` steps left out."""
    dtype = next(module.parameters()).dtype
    spec = CellSpec(module_kind(module), module.input_size, module.hidden_size, module.proj_size)
    weights = layer_weights(module, 0, False).detached()
    step = step_function(spec, weights)
    drives = input_drive(spec, weights, torch.randn(steps, module.input_size, dtype=dtype))
    state = torch.zeros(1, spec.state_size, dtype=dtype)
    states = []
    with torch.no_grad():
        for t in range(steps):
            states.append(state)
            state = step(state, drives[t : t + 1])
    return Trajectory(spec, weights, step, torch.cat(states)[skip:], drives[skip:])
