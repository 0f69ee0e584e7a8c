"""Jacobians of a state map along a trajectory, and its Lyapunov exponents.

``step(s, u)`` is a pure state map (see :mod:`gradscope.recurrent.cells`); a trajectory is the
stack of states before each step, shaped (steps, batch, n), with the drives (steps, batch, G).
Jacobians are exact, batched over steps and batch elements: by the closed forms of
:mod:`gradscope.recurrent.linearised` where a cell has them, else by torch.func (imported only
then: its first use costs a one-time import).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

StepFunction = Callable[[Tensor, Tensor], Tensor]
#: A closed-form Jacobian ``(s, u) -> J`` and JVP ``(s, u, v) -> J v`` over rows.
Jacobian = Callable[[Tensor, Tensor], Tensor]
TangentMap = Callable[[Tensor, Tensor, Tensor], Tensor]

#: Largest number of Jacobian entries materialised at once (chunks of steps stay below it).
JACOBIAN_CHUNK_ENTRIES = 1 << 24


def state_jacobians(
    step: StepFunction, states: Tensor, drives: Tensor, closed: Jacobian | None = None
) -> Tensor:
    """``J = d step(s, u) / ds`` at each row of ``states`` (M, n) and ``drives`` (M, G), by
    the ``closed`` form when given."""
    n = states.shape[-1]
    if closed is not None:
        jacobian = closed
    else:
        from torch.func import jacfwd, vmap

        jacobian = vmap(jacfwd(step, argnums=0))
    chunk = max(1, JACOBIAN_CHUNK_ENTRIES // (n * n))
    return torch.cat(
        [
            jacobian(states[i : i + chunk], drives[i : i + chunk])
            for i in range(0, len(states), chunk)
        ]
    )


def tangent_map(
    step: StepFunction, closed: TangentMap | None = None
) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """``(s, u, Q) -> J(s, u) Q`` for s (B, n), u (B, G), Q (B, n, k), by one batched JVP
    (the ``closed`` form when given).

    Step functions act row-wise on batches, so the k columns of each frame become k extra rows.
    """

    def by_autodiff(rows: Tensor, drives: Tensor, tangents: Tensor) -> Tensor:
        from torch.func import jvp

        return jvp(lambda x: step(x, drives), (rows,), (tangents,))[1]

    along = closed or by_autodiff

    def push_forward(s: Tensor, u: Tensor, frame: Tensor) -> Tensor:
        batch, n, k = frame.shape
        rows = s.repeat_interleave(k, dim=0)
        drives = u.repeat_interleave(k, dim=0)
        tangents = frame.transpose(1, 2).reshape(batch * k, n)
        pushed = along(rows, drives, tangents)
        return pushed.reshape(batch, k, -1).transpose(1, 2)

    return push_forward


def lyapunov_exponents(
    step: StepFunction,
    states: Tensor,
    drives: Tensor,
    count: int,
    burn_in: int,
    generator: torch.Generator | None = None,
    closed: TangentMap | None = None,
) -> Tensor:
    """Top ``count`` Lyapunov exponents (nats per step) along a trajectory, by the QR method.

    Benettin's method: push an orthonormal frame through each step's Jacobian, re-orthonormalise
    with QR, and average ``log |diag R|`` over the steps after ``burn_in``. Returns (batch, count)
    in the order of the frame's columns; a direction a step annihilates (``|R_ii|`` at rounding
    level of ``||J Q||``) gives ``-inf``. Non-finite Jacobians give NaN. ``closed``: the step's
    closed-form JVP, where it has one.
    """
    steps, batch, n = states.shape
    if not 0 <= burn_in < steps:
        raise ValueError(f"burn_in={burn_in} must lie in [0, {steps})")
    push = tangent_map(step, closed)
    noise = torch.randn(n, count, generator=generator, dtype=torch.float64)
    frame = torch.linalg.qr(noise.to(states))[0].expand(batch, n, count)
    tiny = torch.finfo(states.dtype).eps
    total = states.new_zeros(batch, count)
    for t in range(steps):
        pushed = push(states[t], drives[t], frame)
        if not bool(torch.isfinite(pushed).all()):
            return states.new_full((batch, count), math.nan)
        frame, r = torch.linalg.qr(pushed)
        if t < burn_in:
            continue
        stretch = r.diagonal(dim1=-2, dim2=-1).abs()
        scale = pushed.norm(dim=-2).amax(dim=-1, keepdim=True)
        annihilated = stretch <= tiny * scale
        total += torch.where(annihilated, -math.inf, stretch.log())
    return total / (steps - burn_in)
