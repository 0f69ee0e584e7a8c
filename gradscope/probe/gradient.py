"""Where the gradient at the model's input is taken: the probe itself, or, for token ids
(which have no gradient), the output of the embedding that reads them: one call on the whole
probe, or one call per step (a loop that embeds each step's ids as it goes)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gradscope.numerics import pooled_norms
from gradscope.probe.inputs import Probe


@dataclass(frozen=True)
class InputLeaves:
    """The tensors the input gradient is taken at: one shaped as the probe (or its
    embedding), or, ``per_step``, one per time step in time order."""

    tensors: list[Tensor]
    per_step: bool = False


@contextmanager
def input_leaf(model: nn.Module, probe: Probe) -> Iterator[Callable[[], InputLeaves | None]]:
    """While inside, runs of ``model`` on ``probe`` keep the tensors the input gradient is
    taken at; the callable yielded hands them back after a run: the probe, the embedding's
    output on the whole probe, or its outputs step by step; None when there is none (an
    embedding that read the probe otherwise)."""
    embedded: list[Tensor] = []
    hook = None
    if probe.token_module is not None:
        embedding = model.get_submodule(probe.token_module)
        hook = embedding.register_forward_hook(lambda module, args, out: embedded.append(out))

    def leaf() -> InputLeaves | None:
        if probe.inputs.requires_grad:
            return InputLeaves([probe.inputs])
        if len(embedded) == 1 and embedded[0].shape[: probe.inputs.dim()] == probe.inputs.shape:
            return InputLeaves(embedded[:1])
        per_step = probe.time_axis is not None and len(embedded) == probe.steps
        if per_step and all(len(out) == probe.batch for out in embedded):
            return InputLeaves(list(embedded), per_step=True)  # embedded as the loop goes
        return None

    try:
        yield leaf
    finally:
        if hook is not None:
            hook.remove()


def by_step(gradients: Sequence[Tensor | None], leaves: InputLeaves, probe: Probe) -> Tensor:
    """The gradients at the input leaves as (steps, batch, -1), in time order; zeros where
    none arrived."""
    filled = [
        torch.zeros_like(x) if g is None else g
        for g, x in zip(gradients, leaves.tensors, strict=True)
    ]
    if leaves.per_step:
        return torch.stack([g.reshape(probe.batch, -1) for g in filled])
    return filled[0].movedim(probe.time_axis, 0).reshape(probe.steps, probe.batch, -1)


def per_step_input_norms(per_step: Tensor) -> list[float]:
    """``sqrt(mean_b ||dL/dx_t||^2)`` for each time step of a (steps, batch, -1) gradient."""
    return pooled_norms(per_step, per_step.shape[1])
