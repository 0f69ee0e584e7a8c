"""The sequence view: how far back in the input the gradient of a loss at one step reaches.

For any model whose input has a time axis (a transformer, a temporal convolution, a
state-space model computed by a parallel scan, a recurrent network), the gradient at the input,
``||dL/dx_t||`` per step, against the lag from the step ``t*`` the loss reads: a loss that
cannot feel inputs more than k steps back has a gradient of zero, or one too small to learn
from, beyond lag k. Token ids have no gradient: theirs is taken at their embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gradscope.errors import GradscopeError
from gradscope.numerics import pooled_norms
from gradscope.probe import Probe, run_model
from gradscope.probe.gradient import InputLeaves, by_step, input_leaf
from gradscope.probe.loss import loss_direction, over_time, projected_output, read_output


@dataclass
class SequenceMeasurement:
    """``||dL/dx_{t*-k}||`` for each lag k (over every loss step for ``all``), the loss
    step as asked (``last``, ``all`` or a step number) and the steps probed."""

    grad_norm_by_lag: list[float]
    loss_at: int | str
    steps: int


def by_lag(input_grad_norm: list[float]) -> list[float]:
    """Per-step input gradients of a loss at the last step, by lag from it."""
    return input_grad_norm[::-1]


def loss_step(loss_at: int | str, steps: int) -> int:
    """The step a ``last`` or numbered loss reads, in [0, steps); a step outside is refused."""
    if loss_at == "last":
        return steps - 1
    step = int(loss_at)
    if not -steps <= step < steps:
        raise GradscopeError(
            f"--loss-at {loss_at} is outside the probe's {steps} steps: give a step from 0 to "
            f"{steps - 1} (or -1 for the last), or raise --steps"
        )
    return step % steps


def measure_sequence(model: nn.Module, probe: Probe, loss_at: int | str) -> SequenceMeasurement:
    """One run of the probe and one (batched) backward pass: the input gradient by lag from
    the step the loss reads. A loss at one step is ``sum_b <w, y_b,t*>`` as everywhere in
    gradscope; ``all`` takes each step's loss on its own and pools the lags over them."""
    steps = probe.steps
    with input_leaf(model, probe) as leaf:
        output = run_model(model, probe)
        leaves = leaf()
    if leaves is None:
        raise GradscopeError(
            "the input gradient cannot be taken: the model reads token ids, and its embedding "
            "reads them neither whole nor one step at a time"
        )
    y = read_output(output, probe)
    sequence = over_time(y, probe)
    if sequence is None:
        if loss_at not in ("last", -1, steps - 1):
            raise GradscopeError(
                f"--loss-at {loss_at}: the model's output (shape {tuple(y.shape)}) has no time "
                f"axis of {steps} steps, so its loss reads the whole output; drop --loss-at"
            )
        sequence = projected_output(output, probe)[None]
        read = [0]
        last = steps - 1
    else:
        last = None
        read = list(range(steps)) if loss_at == "all" else [loss_step(loss_at, steps)]
    w = loss_direction(sequence.shape[-1], probe, sequence)
    projected = sequence @ w  # (steps read, batch)
    per_step = _input_gradients(projected, read, leaves, probe)  # (losses, steps, batch, -1)
    rows = []
    for position, gradient in zip(read, per_step, strict=True):
        at = position if last is None else last
        rows.append(pooled_norms(gradient[: at + 1].flip(0), gradient.shape[1]))
    return SequenceMeasurement(_pooled_over_losses(rows), loss_at, steps)


def _input_gradients(
    projected: Tensor, read: list[int], leaves: InputLeaves, probe: Probe
) -> Tensor:
    """``dL_t/dx`` for each loss step t in ``read``, shaped (losses, steps, batch, -1): one
    backward pass batched over the losses, or one pass each where the model's backward cannot
    be batched."""
    losses = torch.stack([projected[t].sum() for t in read])
    inputs = leaves.tensors
    if len(read) == 1:
        per_loss = [torch.autograd.grad(losses[0], inputs, allow_unused=True)]
    else:
        seeds = torch.eye(len(read), dtype=losses.dtype, device=losses.device)
        try:
            grads = torch.autograd.grad(
                losses, inputs, seeds, is_grads_batched=True, allow_unused=True
            )
            per_loss = [[None if g is None else g[i] for g in grads] for i in range(len(read))]
        except RuntimeError:  # a backward that vmap cannot batch: one pass per loss
            per_loss = [
                torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
                for loss in losses
            ]
    return torch.stack([by_step(grads, leaves, probe) for grads in per_loss])


def _pooled_over_losses(rows: list[list[float]]) -> list[float]:
    """For each lag, the RMS over the losses that reach that far back of their norms."""
    longest = max(len(row) for row in rows)
    pooled = []
    for lag in range(longest):
        values = torch.tensor([row[lag] for row in rows if len(row) > lag], dtype=torch.float64)
        pooled.append(float(values.pow(2).mean().sqrt()))
    return pooled
