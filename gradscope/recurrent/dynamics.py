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
from dataclasses import dataclass

import torch
from torch import Tensor

from gradscope.errors import GradscopeError
from gradscope.krylov import (
    MAX_DIMENSION,
    KrylovEstimate,
    Products,
    bytes_per_map,
    largest_singular_values,
    rows_within,
    spectral_radii,
)
from gradscope.numerics import largest_singular_value, spectral_radius
from gradscope.progress import note

StepFunction = Callable[[Tensor, Tensor], Tensor]
#: A closed-form Jacobian ``(s, u) -> J`` over rows, and a closed-form linearisation.
Jacobian = Callable[[Tensor, Tensor], Tensor]
Linearise = Callable[[Tensor, Tensor], Products]


def state_jacobians(
    step: StepFunction, states: Tensor, drives: Tensor, closed: Jacobian | None = None
) -> Tensor:
    """``J = d step(s, u) / ds`` at each row of ``states`` (M, n) and ``drives`` (M, G), by
    the ``closed`` form when given, else by torch.func (imported only then)."""
    if closed is not None:
        return closed(states, drives)
    from torch.func import jacfwd, vmap

    return vmap(jacfwd(step, argnums=0))(states, drives)


def dense_spectra(
    step: StepFunction,
    states: Tensor,
    drives: Tensor,
    closed: Jacobian | None,
    chunk_bytes: int,
) -> tuple[Tensor, Tensor] | None:
    """The spectral radius and largest singular value of the Jacobian at each row, exactly,
    a chunk of at most ``chunk_bytes`` of Jacobians at a time; None when one is not finite
    (LAPACK refuses NaN and Inf)."""
    n = states.shape[-1]
    chunk = max(1, chunk_bytes // (n * n * states.element_size()))
    radii, sigmas = [], []
    for i in range(0, len(states), chunk):
        rows = slice(i, i + chunk)
        jacobians = state_jacobians(step, states[rows], drives[rows], closed)
        if not bool(torch.isfinite(jacobians).all()):
            return None
        radii.append(spectral_radius(jacobians))
        sigmas.append(largest_singular_value(jacobians))
    if not radii:
        return states.new_empty(0), states.new_empty(0)
    return torch.cat(radii), torch.cat(sigmas)


def autograd_linearisation(step: StepFunction, s: Tensor, u: Tensor) -> Products:
    """A custom step linearised at rows ``(s, u)``: ``J v`` by torch.func's JVP, ``J^T w`` by
    backpropagating through one recorded forward step (kept for every pull)."""
    from torch.func import jvp

    rows = s.detach().requires_grad_(True)
    with torch.enable_grad():
        stepped = step(rows, u)

    def push(v: Tensor) -> Tensor:
        return jvp(lambda x: step(x, u), (s,), (v,))[1]

    def pull(w: Tensor) -> Tensor:
        if not stepped.requires_grad:  # the step does not read its state
            return torch.zeros_like(w)
        grad = torch.autograd.grad(stepped, rows, w, retain_graph=True, allow_unused=True)[0]
        return torch.zeros_like(w) if grad is None else grad

    return Products(push, pull)


@dataclass(frozen=True)
class MatrixFreeSpectra:
    """Spectral radius and largest singular value of each Jacobian, estimated matrix-free."""

    spectral_radius: KrylovEstimate
    sigma_max: KrylovEstimate


def matrix_free_spectra(
    linearise: Linearise,
    states: Tensor,
    drives: Tensor,
    budget_bytes: int,
    generator: torch.Generator | None = None,
    label: str = "",
) -> MatrixFreeSpectra:
    """Spectra of the Jacobians at rows ``states`` (M, n), ``drives`` (M, G) by Krylov
    methods on products with them, in chunks of rows whose Krylov bases fit ``budget_bytes``.
    ``linearise(s, u)`` gives a chunk's products; ``label`` names them in progress notes."""
    m, n = states.shape
    if m == 0:
        empty = KrylovEstimate(states.new_empty(0), states.new_empty(0), 0, 0.0)
        return MatrixFreeSpectra(empty, empty)
    needed = bytes_per_map(n, MAX_DIMENSION, states.dtype)
    if needed > budget_bytes:
        raise GradscopeError(
            f"the spectra of one step's {n}-dimensional Jacobian need {needed:,} bytes, more "
            f"than the {budget_bytes:,} bytes of Jacobian work allowed: give --max-memory "
            f"{-(-needed // (1 << 20))}MB or more"
        )
    chunk = rows_within(budget_bytes, n, MAX_DIMENSION, states.dtype)
    radii, sigmas = [], []
    for i in range(0, m, chunk):
        rows = slice(i, i + chunk)
        chunk_states, chunk_drives = states[rows], drives[rows]
        note(f"{label}: spectra of Jacobians {i + 1}-{i + len(chunk_states)} of {m}, matrix-free")

        def products_of(index: Tensor, s: Tensor = chunk_states, u: Tensor = chunk_drives):
            return linearise(s[index], u[index])

        start = torch.randn(2, len(chunk_states), n, generator=generator, dtype=torch.float64)
        start = start.to(states)
        radii.append(spectral_radii(products_of, start[0]))
        sigmas.append(largest_singular_values(products_of, start[1]))
    return MatrixFreeSpectra(_joined(radii), _joined(sigmas))


def _joined(estimates: list[KrylovEstimate]) -> KrylovEstimate:
    return KrylovEstimate(
        torch.cat([e.values for e in estimates]),
        torch.cat([e.residuals for e in estimates]),
        max(e.dimension for e in estimates),
        estimates[0].tolerance,
    )


def tangent_map(
    step: StepFunction, linearise: Linearise | None = None
) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """``(s, u, Q) -> J(s, u) Q`` for s (B, n), u (B, G), Q (B, n, k): by the cell's
    ``linearise`` where it has one (its coefficients broadcast over the k columns), else by
    one batched JVP of torch.func whose k columns become k extra rows (step functions act
    row-wise)."""

    def by_linearisation(s: Tensor, u: Tensor, frame: Tensor) -> Tensor:
        linear = linearise(s[:, None, :], u[:, None, :])
        return linear.push(frame.transpose(1, 2)).transpose(1, 2)

    def by_autodiff(s: Tensor, u: Tensor, frame: Tensor) -> Tensor:
        from torch.func import jvp

        batch, n, k = frame.shape
        drives = u.repeat_interleave(k, dim=0)
        tangents = frame.transpose(1, 2).reshape(batch * k, n)
        rows = s.repeat_interleave(k, dim=0)
        pushed = jvp(lambda x: step(x, drives), (rows,), (tangents,))[1]
        return pushed.reshape(batch, k, -1).transpose(1, 2)

    return by_autodiff if linearise is None else by_linearisation


def lyapunov_exponents(
    step: StepFunction,
    states: Tensor,
    drives: Tensor,
    count: int,
    burn_in: int,
    generator: torch.Generator | None = None,
    linearise: Linearise | None = None,
) -> Tensor:
    """Top ``count`` Lyapunov exponents (nats per step) along a trajectory, by the QR method.

    Benettin's method: push an orthonormal frame through each step's Jacobian, re-orthonormalise
    with QR, and average ``log |diag R|`` over the steps after ``burn_in``. Returns (batch, count)
    in the order of the frame's columns; a direction a step annihilates (``|R_ii|`` at rounding
    level of ``||J Q||``) gives ``-inf``. Non-finite Jacobians give NaN. ``linearise``: the
    cell's closed-form linearisation, where it has one.
    """
    steps, batch, n = states.shape
    if not 0 <= burn_in < steps:
        raise ValueError(f"burn_in={burn_in} must lie in [0, {steps})")
    push = tangent_map(step, linearise)
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
