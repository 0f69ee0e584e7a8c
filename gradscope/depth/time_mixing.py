"""Time mixing that no block accounts for: a recurrence written in the model's own code.

A sequence model without recurrent modules mixes time somewhere: in blocks the depth view
measures (attention, a temporal convolution), or in code between them (a parallel scan, a
cumulative sum, a loop over steps). The second is a recurrence no view follows over time. It
shows as an output whose last step depends on input steps in the first half of the sequence
(a shift by one step, as a token shift does, is a window, not a recurrence), causally (its
first step depends on no later one: a mean over all steps is mixing, not a recurrence),
while no block's output at one step depends on its input at another.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import jvp

from gradscope.depth.blocks import Block

#: Changes smaller than this fraction of the largest are rounding, not dependence.
TOLERANCE = 1e-9
#: Fewer steps than this leave no earlier step to speak of.
MIN_STEPS = 3
#: What a model that mixes time outside every block does, in words.
MIXED_OUTSIDE = (
    "its forward mixes time steps outside every module, causally (a loop over steps, a "
    "scan): a recurrence"
)


def _at(tensor: Tensor, axis: int, steps: int) -> bool:
    return tensor.dim() > axis and tensor.shape[axis] == steps


def _reaches(change: Tensor | None, axis: int, steps: slice | list[int]) -> bool:
    """Whether ``change`` (a gradient or a pushed tangent) is more than rounding at any of
    ``steps`` of ``axis``, against its largest entry anywhere."""
    if change is None:
        return False
    per_step = change.detach().movedim(axis, 0).reshape(change.shape[axis], -1).abs()
    largest = float(per_step.max())
    chosen = per_step[steps]
    return largest > 0 and chosen.numel() > 0 and float(chosen.max()) > TOLERANCE * largest


def reaches_back(gradient: Tensor | None, axis: int) -> bool:
    """Whether a gradient taken at the last step reaches back past the first half of ``axis``
    (as a recurrence does; a shift by a step or a short window does not)."""
    return gradient is not None and _reaches(gradient, axis, slice(0, gradient.shape[axis] // 2))


def reaches_forward(gradient: Tensor | None, axis: int) -> bool:
    """Whether a gradient taken at the first step reaches any later step of ``axis``."""
    return _reaches(gradient, axis, slice(1, None))


def first_step_gradient(
    output: Tensor | None, first_input: Tensor, axis: int, steps: int
) -> Tensor | None:
    """The gradient of the output's first step (a seeded projection) at the first block's
    input; None where the output has no time axis. Keeps the graph for the main pass."""
    if output is None or not _at(output, axis, steps) or not output.requires_grad:
        return None
    first = output.select(axis, 0)
    weights = torch.randn(
        first.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    (gradient,) = torch.autograd.grad(
        (first * weights.to(first)).sum(), [first_input], retain_graph=True, allow_unused=True
    )
    return gradient


def block_mixes_time(blocks: list[Block], axis: int, steps: int) -> bool:
    """Whether some block's output at one step depends on its input at another: one JVP of
    every block whose input has the time axis, with a tangent at the middle step only."""
    chosen = [b for b in blocks if _at(b.value, axis, steps)]
    if not chosen:
        return False
    middle = steps // 2
    tangents = []
    for block in chosen:
        tangent = torch.zeros_like(block.value)
        tangent.select(axis, middle).normal_(generator=torch.Generator().manual_seed(0))
        tangents.append(tangent)
    functions = [block.function() for block in chosen]

    def stacked(*xs: Tensor) -> tuple[Tensor, ...]:
        return tuple(f(x) for f, x in zip(functions, xs, strict=True))

    try:
        _, pushed = jvp(stacked, tuple(b.value for b in chosen), tuple(tangents))
    except Exception:
        return True  # a block forward-mode cannot follow: do not claim the mixing is outside
    others = [step for step in range(steps) if step != middle]
    # a block that reduces over time (a pooling) mixes time too
    return any(not _at(change, axis, steps) or _reaches(change, axis, others) for change in pushed)


def mixing_outside_blocks(
    blocks: list[Block],
    output: Tensor | None,
    from_last_step: Tensor | None,
    from_first_step: Tensor | None,
    axis: int,
    steps: int,
) -> bool:
    """Whether the model mixes time causally outside every block: its output keeps the time
    axis, the gradient from its last step reaches earlier steps of the first block's input,
    the gradient from its first step reaches no later one, and no block mixes time itself."""
    if steps < MIN_STEPS or not blocks or output is None or not _at(output, axis, steps):
        return False
    if not _at(blocks[0].input, axis, steps) or not reaches_back(from_last_step, axis):
        return False
    if reaches_forward(from_first_step, axis):
        return False
    return not block_mixes_time(blocks, axis, steps)
