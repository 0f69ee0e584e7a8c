"""Matrix-free Jacobian gains of every block at once: chi, sigma_max, and the skip path.

All blocks are treated as one function of all their inputs, ``F(x_1..x_L) = (f_1(x_1), ...,
f_L(x_L))``, each ``f_i`` applied to the input it really saw on the probe. One VJP of ``F`` per
probe then gives ``J_i^T u_i`` for every block, and one JVP gives ``J_i v_i``: the cost of a
few forward and backward passes of the model, whatever its depth.

- ``chi_i = E ||J_i^T u||^2 / n_out`` for ``u ~ N(0, I)`` (Hutchinson): the mean squared
  singular value, what the block does to an isotropic gradient. Its standard error is the
  sample standard deviation of the per-probe estimates over ``sqrt(probes)``, reported
  relative to chi (with two probes or more).
- ``sigma_max`` by power iteration on ``J^T J`` (JVP then VJP), started from ``J^T u``: a lower
  bound that tightens with every iteration (each costs about one forward and backward pass);
  random layers converge slowly (17% low after 2 iterations on a 512-wide ReLU layer). The
  JVPs skip the zero weight tangents of linear layers, convolutions and batch norm, and run
  attention through its math backend where the fused kernel has no forward derivative
  (:mod:`gradscope.depth.forward_mode`).
- Residual: the Jacobian's alignment with its skip path ``P``, ``<J, P>_F / ||P||_F^2``, above
  one half. For a block that keeps its shape ``P = I``: ``tr(J) / n = E <u, J^T u> / n``. For a
  block with a projection shortcut (a ResNet's downsampling block, see
  :func:`gradscope.depth.blocks.find_shortcut`), ``P`` is the Jacobian of the path through the
  shortcut, measured by feeding the shortcut a second copy of the input: the VJP then splits
  ``J^T u`` exactly into the shortcut path's part ``P^T u`` and the branch's. The branch gain is
  ``E ||(J - P)^T u||^2 / n_out``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from torch.func import vjp as func_vjp
from torch.func import vmap

from gradscope.depth.forward_mode import NO_FORWARD, BlockPushes
from gradscope.numerics import power_iteration

#: The skip-path alignment <J, P>_F / ||P||_F^2 above this marks a residual block (for a block
#: that keeps its shape, tr(J)/n).
RESIDUAL_TRACE = 0.5
#: Up to this many probes, the VJPs run one after another: as fast as one batched VJP for large
#: layers, and vmap's batched convolution backward costs about three times a plain one on CPU.
LOOPED_PROBES = 4


@dataclass
class Gains:
    """One block's Jacobian gains; ``chi_rel_stderr`` is the standard error of chi over chi
    (None with one probe); ``sigma_max_method`` how the JVPs were taken (None where they could
    not be); ``shortcut``: the skip path is a projection shortcut's, not the identity."""

    chi: float
    sigma_max: float
    residual: bool
    branch_chi: float | None
    chi_rel_stderr: float | None = None
    sigma_max_method: str | None = None
    shortcut: bool = False


def draw(shape: tuple[int, ...], generator: torch.Generator, like: Tensor) -> Tensor:
    """Probes ``u ~ N(0, I)`` for outputs like ``like``, from the (CPU) ``generator``: drawn in
    float32 for float32 outputs (four times cheaper than float64 on CPU), else in float64."""
    dtype = torch.float32 if like.dtype == torch.float32 else torch.float64
    return torch.randn(shape, generator=generator, dtype=dtype).to(like)


def vjp(function: Callable, *primals: Tensor) -> tuple[object, Callable]:
    """``torch.func.vjp``; where a model's code refuses function transforms (an
    ``autograd.Function`` without ``setup_context``, such as BLOOM's GELU), the same product
    by plain autograd on a graph kept for every pullback."""
    try:
        return func_vjp(function, *primals)
    except RuntimeError:
        pass
    leaves = [x.detach().requires_grad_(True) for x in primals]
    with torch.enable_grad():
        output = function(*leaves)
    outputs = (output,) if isinstance(output, Tensor) else tuple(output)

    def pullback(cotangents: object) -> tuple[Tensor, ...]:
        given = (cotangents,) if isinstance(cotangents, Tensor) else tuple(cotangents)
        grads = torch.autograd.grad(outputs, leaves, given, retain_graph=True, allow_unused=True)
        return tuple(
            torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves, strict=True)
        )

    detached = (
        output.detach() if isinstance(output, Tensor) else type(output)(o.detach() for o in outputs)
    )
    return detached, pullback


def _pull_all(pullback: Callable, cotangents: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """VJPs for K stacked cotangents per block: looped for a few probes, else batched when the
    model allows."""
    count = cotangents[0].shape[0]
    if count > LOOPED_PROBES:
        try:
            return vmap(pullback)(cotangents)
        except Exception:
            pass
    rows = [pullback(tuple(u[k] for u in cotangents)) for k in range(count)]
    return tuple(torch.stack(parts) for parts in zip(*rows, strict=True))


def _sigmas(
    functions: Sequence[Callable[[Tensor], Tensor]],
    inputs: Sequence[Tensor],
    pull: Callable[[tuple[Tensor, ...]], tuple[Tensor, ...]],
    start: tuple[Tensor, ...],
    iterations: int,
) -> list[tuple[float, str | None]]:
    """(sigma_max, how) of every block: all at once, else each alone, NaN where no JVP goes."""
    pushes = BlockPushes(functions, inputs)
    try:
        sigmas = power_iteration(pushes, pull, start, iterations)
        return [(sigma, pushes.method(i)) for i, sigma in enumerate(sigmas)]
    except NO_FORWARD:
        pass
    found: list[tuple[float, str | None]] = []
    for f, x, v in zip(functions, inputs, start, strict=True):
        try:
            _, pullback = vjp(f, x)
            alone = BlockPushes([f], [x])
            (sigma,) = power_iteration(
                alone, lambda w, pullback=pullback: pullback(w[0]), (v,), iterations
            )
            found.append((sigma, alone.method(0)))
        except NO_FORWARD:
            found.append((math.nan, None))
    return found


def _relative_stderr(per_probe: Tensor) -> float | None:
    """The standard error of the mean of ``per_probe`` estimates, over that mean."""
    if per_probe.numel() < 2:
        return None
    mean = float(per_probe.mean())
    if mean == 0:  # every estimate is 0: the Jacobian is, exactly
        return 0.0
    return float(per_probe.std() / math.sqrt(per_probe.numel())) / mean


def block_gains(
    functions: Sequence[Callable[[Tensor], Tensor]],
    inputs: Sequence[Tensor],
    probes: int,
    iterations: int,
    generator: torch.Generator,
    weighted: Sequence[bool] | None = None,
    skips: Sequence[Callable[[Tensor, Tensor], Tensor] | None] | None = None,
) -> list[Gains]:
    """chi, sigma_max and the skip-path test for every block ``f_i`` at its input ``x_i``.

    Only blocks marked ``weighted`` (a weight matrix acts in them) can be residual: a norm or
    an activation alone is near the identity without an identity path. ``skips[i]``, for a
    block with a projection shortcut, is the block as a function of its input and, apart, of
    the shortcut's input (equal to ``f_i(x)`` at ``(x, x)``): its skip path is the shortcut's.
    sigma_max is NaN where forward-mode AD cannot go.
    """
    count = len(functions)
    weighted = [True] * count if weighted is None else weighted
    skips = [None] * count if skips is None else list(skips)
    split = [i for i, skip in enumerate(skips) if skip is not None]
    second = {i: count + k for k, i in enumerate(split)}  # where the shortcut's input sits

    def stacked(*xs: Tensor) -> tuple[Tensor, ...]:
        return tuple(
            skips[i](x, xs[second[i]]) if i in second else f(x)  # type: ignore[misc]
            for i, (f, x) in enumerate(zip(functions, xs[:count], strict=True))
        )

    def whole(grads: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """J^T w of every block: a split block's two parts added."""
        return tuple(
            g + grads[second[i]] if i in second else g for i, g in enumerate(grads[:count])
        )

    outputs, pullback = vjp(stacked, *inputs, *(inputs[i] for i in split))
    cotangents = tuple(draw((probes, *y.shape), generator, y) for y in outputs)
    parts = tuple(p.detach() for p in _pull_all(pullback, cotangents))
    pulled = whole(parts)
    found = _sigmas(
        functions,
        inputs,
        lambda pushed: whole(pullback(pushed)),
        tuple(g[0] for g in pulled),
        iterations,
    )
    gains = []
    rows = zip(inputs, outputs, cotangents, pulled, found, weighted, strict=True)
    for index, (x, y, u, g, (sigma, how), may_skip) in enumerate(rows):
        size = probes * y.numel()
        per_probe = g.pow(2).flatten(1).sum(1, dtype=torch.float64) / y.numel()
        gain = Gains(float(per_probe.mean()), sigma, False, None, _relative_stderr(per_probe))
        gain.sigma_max_method = None if math.isnan(sigma) else how
        if index in second and may_skip:
            path = parts[second[index]]  # P^T u: the part that came through the shortcut
            norm = float(path.pow(2).sum())
            overlap = float((g * path).sum()) / norm if norm > 0 else math.nan
            # a Jacobian that is not finite (a weight holding Inf) shows no skip
            gain.shortcut = math.isfinite(overlap) and overlap > RESIDUAL_TRACE
            gain.residual = gain.shortcut
            if gain.residual:
                gain.branch_chi = float((g - path).pow(2).sum() / size)
        elif x.shape == y.shape and may_skip:
            trace = float((u * g).sum() / size)
            gain.residual = math.isfinite(trace) and trace > RESIDUAL_TRACE
            if gain.residual:
                gain.branch_chi = float((g - u).pow(2).sum() / size)
        gains.append(gain)
    return gains


class WholeGains(NamedTuple):
    """The input-output Jacobian's sigma_max and RMS singular value, and how its JVPs went."""

    sigma_max: float
    rms: float
    method: str | None


def whole_gains(
    function: Callable[[Tensor], Tensor],
    x: Tensor,
    probes: int,
    iterations: int,
    generator: torch.Generator,
    taken: tuple[Tensor, Callable[[Tensor], Tensor]] | None = None,
) -> WholeGains:
    """(sigma_max, RMS singular value, method) of ``function``'s Jacobian at ``x`` (per example).

    The RMS is ``sqrt(E ||J^T u||^2 / n_out)`` over ``probes`` random ``u``; sigma_max (the
    largest over the batch) comes from power iteration, NaN where forward-mode AD cannot go.
    ``taken``: ``(y, pull)``, the output and a VJP ``w -> J^T w`` at ``x`` from a graph already
    built (the probe run's), in place of a new forward pass.
    """
    if taken is None:
        y, pullback = vjp(function, x)

        def pull(w: Tensor) -> Tensor:
            return pullback(w)[0]

    else:
        y, pull = taken
    cotangents = draw((probes, *y.shape), generator, y)
    (pulled,) = _pull_all(lambda u: (pull(u[0]),), (cotangents,))
    pulled = pulled.detach()
    rms = float((pulled.pow(2).sum() / (probes * y.numel())).sqrt())
    pushes = BlockPushes([function], [x])
    try:
        (sigma,) = power_iteration(
            pushes, lambda pushed: (pull(pushed[0]),), (pulled[0],), iterations
        )
    except NO_FORWARD:
        return WholeGains(math.nan, rms, None)
    return WholeGains(sigma, rms, pushes.method(0))


def jacobian_sigma_max(
    function: Callable[[Tensor], Tensor], x: Tensor, iterations: int, generator: torch.Generator
) -> float:
    """sigma_max of ``function``'s Jacobian at ``x`` (the largest over a batch), matrix-free."""
    return whole_gains(function, x, 1, iterations, generator)[0]
