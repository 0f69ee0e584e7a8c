"""Numerics every view shares: pooled gradient norms, spectra, power iteration, summaries."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def pooled_norms(rows: Tensor, batch: int) -> list[float]:
    """``sqrt(sum ||g||^2 / batch)`` of each row (first axis) of ``rows``: the RMS over a batch.

    Each row is scaled by its largest entry first, so that norms up to the dtype's maximum do
    not overflow when squared; a row with Inf or NaN gives Inf or NaN.
    """
    flat = rows.reshape(rows.shape[0], -1).abs()
    scale = flat.amax(dim=-1, keepdim=True)
    usable = torch.isfinite(scale) & (scale > 0)
    safe = torch.where(usable, scale, torch.ones_like(scale))
    rms = (flat / safe).pow(2).sum(-1, keepdim=True).div(batch).sqrt() * scale
    return torch.where(usable, rms, scale).squeeze(-1).tolist()


def pooled_norm(gradient: Tensor | None, batch: int) -> float:
    """:func:`pooled_norms` of one whole tensor; 0 where no gradient arrived (``None``)."""
    if gradient is None:
        return 0.0
    return pooled_norms(gradient.reshape(1, -1), batch)[0]


def spectral_radius(matrices: Tensor) -> Tensor:
    """Largest eigenvalue modulus of each matrix in a (..., n, n) stack."""
    return torch.linalg.eigvals(matrices).abs().amax(dim=-1)


def largest_singular_value(matrices: Tensor) -> Tensor:
    """Largest singular value (spectral norm) of each matrix in a (..., n, n) stack."""
    return torch.linalg.matrix_norm(matrices, ord=2)


def median_and_max(values: Tensor) -> tuple[float, float]:
    """Median and maximum of ``values``; NaN for both when empty or not all finite."""
    values = values.detach()  # a cell may read weights it keeps outside its parameters
    if values.numel() == 0 or not bool(torch.isfinite(values).all()):
        return math.nan, math.nan
    return float(values.quantile(0.5)), float(values.max())


def unit(vectors: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """Each tensor scaled to norm 1 (a zero tensor stays zero)."""
    return tuple(v / v.norm().clamp_min(torch.finfo(v.dtype).tiny) for v in vectors)


def power_iteration(
    push: Callable[[tuple[Tensor, ...]], tuple[Tensor, ...]],
    pull: Callable[[tuple[Tensor, ...]], tuple[Tensor, ...]],
    start: tuple[Tensor, ...],
    iterations: int,
) -> list[float]:
    """Largest singular values of several Jacobians at once, matrix-free.

    ``push`` maps tangents to ``J v`` (a JVP), ``pull`` cotangents to ``J^T w`` (a VJP), each
    over a tuple of independent maps. Each iteration pushes the unit vectors and pulls the
    result back; ``||J v||`` after the last push is a lower bound on sigma_max that tightens
    with every iteration. Raises what ``push`` raises where forward-mode AD cannot go: the
    caller decides what to report.
    """
    vectors = unit(start)
    sigmas = [math.nan] * len(start)
    for step in range(iterations):
        pushed = push(vectors)
        sigmas = [float(w.detach().norm()) for w in pushed]
        if step < iterations - 1:  # the last pull would only start another iteration
            vectors = unit(tuple(v.detach() for v in pull(pushed)))
    return sigmas
