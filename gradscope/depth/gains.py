"""Matrix-free Jacobian gains of every block at once: chi, sigma_max, and the identity path.

All blocks are treated as one function of all their inputs, ``F(x_1..x_L) = (f_1(x_1), ...,
f_L(x_L))``, each ``f_i`` applied to the input it really saw on the probe. One batched VJP of
``F`` then gives ``J_i^T u_i`` for every block, and one JVP gives ``J_i v_i``: the cost of a
few forward and backward passes of the model, whatever its depth.

- ``chi_i = E ||J_i^T u||^2 / n_out`` for ``u ~ N(0, I)`` (Hutchinson): the mean squared
  singular value, what the block does to an isotropic gradient.
- ``sigma_max`` by power iteration on ``J^T J`` (JVP then VJP), started from ``J^T u``: a lower
  bound that tightens with every iteration (each costs about one forward and backward pass);
  random layers converge slowly (17% low after 2 iterations on a 512-wide ReLU layer).
- Residual: ``tr(J) / n = E <u, J^T u> / n`` near 1 means an identity path; the branch gain is
  ``E ||(J - I)^T u||^2 / n``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import jvp, vjp, vmap

from gradscope.numerics import power_iteration

#: tr(J)/n above this marks a block with an identity path (a residual block).
RESIDUAL_TRACE = 0.5


@dataclass
class Gains:
    """One block's Jacobian gains."""

    chi: float
    sigma_max: float
    residual: bool
    branch_chi: float | None


def _pull_all(pullback: Callable, cotangents: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """VJPs for K stacked cotangents per block: batched when the model allows, else looped."""
    try:
        return vmap(pullback)(cotangents)
    except Exception:
        count = cotangents[0].shape[0]
        rows = [pullback(tuple(u[k] for u in cotangents)) for k in range(count)]
        return tuple(torch.stack(parts) for parts in zip(*rows, strict=True))


def block_gains(
    functions: Sequence[Callable[[Tensor], Tensor]],
    inputs: Sequence[Tensor],
    probes: int,
    iterations: int,
    generator: torch.Generator,
    weighted: Sequence[bool] | None = None,
) -> list[Gains]:
    """chi, sigma_max and the identity test for every block ``f_i`` at its input ``x_i``.

    Only blocks marked ``weighted`` (a weight matrix acts in them) can be residual: a norm or
    an activation alone is near the identity without an identity path. sigma_max is NaN where
    forward-mode AD cannot go (some fused attention kernels).
    """
    weighted = [True] * len(functions) if weighted is None else weighted

    def stacked(*xs: Tensor) -> tuple[Tensor, ...]:
        return tuple(f(x) for f, x in zip(functions, xs, strict=True))

    outputs, pullback = vjp(stacked, *inputs)
    cotangents = tuple(
        torch.randn((probes, *y.shape), generator=generator, dtype=torch.float64).to(y)
        for y in outputs
    )
    pulled = _pull_all(pullback, cotangents)
    sigmas = power_iteration(
        lambda vectors: jvp(stacked, tuple(inputs), vectors)[1],
        pullback,
        tuple(p[0] for p in pulled),
        iterations,
    )
    gains = []
    rows = zip(inputs, outputs, cotangents, pulled, sigmas, weighted, strict=True)
    for x, y, u, g, sigma, may_skip in rows:
        g = g.detach()
        chi = float(g.pow(2).sum() / (probes * y.numel()))
        residual, branch = False, None
        if x.shape == y.shape and may_skip:
            trace = float((u * g).sum() / (probes * y.numel()))
            residual = trace > RESIDUAL_TRACE
            if residual:
                branch = float((g - u).pow(2).sum() / (probes * y.numel()))
        gains.append(Gains(chi, sigma, residual, branch))
    return gains


def whole_gains(
    function: Callable[[Tensor], Tensor],
    x: Tensor,
    probes: int,
    iterations: int,
    generator: torch.Generator,
) -> tuple[float, float]:
    """(sigma_max, RMS singular value) of ``function``'s Jacobian at ``x`` (per example).

    The RMS is ``sqrt(E ||J^T u||^2 / n_out)`` over ``probes`` random ``u``; sigma_max (the
    largest over the batch) comes from power iteration, NaN where forward-mode AD cannot go.
    """
    y, pullback = vjp(function, x)
    cotangents = torch.randn((probes, *y.shape), generator=generator, dtype=torch.float64).to(y)
    (pulled,) = _pull_all(lambda u: pullback(u[0]), (cotangents,))
    pulled = pulled.detach()
    rms = float((pulled.pow(2).sum() / (probes * y.numel())).sqrt())
    (sigma,) = power_iteration(
        lambda vectors: (jvp(function, (x,), vectors)[1],),
        lambda pushed: pullback(pushed[0]),
        (pulled[0],),
        iterations,
    )
    return sigma, rms


def jacobian_sigma_max(
    function: Callable[[Tensor], Tensor], x: Tensor, iterations: int, generator: torch.Generator
) -> float:
    """sigma_max of ``function``'s Jacobian at ``x`` (the largest over a batch), matrix-free."""
    return whole_gains(function, x, 1, iterations, generator)[0]
