"""Matrix-free spectra of many Jacobians at once: Arnoldi for the spectral radius, Golub-Kahan
bidiagonalisation for the largest singular value.

Both work on M independent n x n maps known only by their products (:class:`Products`):
``push(V)`` gives ``J_m v_m`` for each row m of ``V`` (M, n), ``pull(W)`` gives ``J_m^T w_m``.
One call serves every map, so the work is a few large batched products rather than M small
ones; maps whose estimates have converged leave the batch. The Krylov bases are
(M, k + 1, n): callers bound memory by passing a chunk of maps at a time (see
:func:`rows_within`).

An estimate has converged when its Ritz pair's residual, relative to the estimate, is at most
``tolerance``, at a Krylov dimension of at least MIN_DIMENSION (and, for the spectral radius,
with the value unmoved since the last check): a lesser value can converge before the largest
has emerged. A Krylov space that becomes invariant (a residual of zero) gives the exact value.
For the largest singular value the residual bounds the error (the matrix ``J^T J`` is
symmetric); for an eigenvalue of a non-normal matrix the error can exceed the residual, so the
oracle tests compare with dense eigenvalues, not with the residual.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor

RowMap = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Products:
    """Products with a batch of linear maps, row by row: ``push(V)`` gives ``J_m v_m`` and
    ``pull(W)`` gives ``J_m^T w_m`` for each row m."""

    push: RowMap
    pull: RowMap


#: ``products_of(index)``: the products of the maps numbered ``index`` (a 1-D long tensor).
ProductsOf = Callable[[Tensor], Products]


#: Largest Krylov dimension; a map not converged by then keeps its best estimate.
MAX_DIMENSION = 80
#: No estimate is taken as converged below this Krylov dimension: a small space can hold a
#: converged Ritz pair of the second largest value before the largest has emerged (their
#: gap is small in random-like Jacobians).
MIN_DIMENSION = 32
#: Ritz values are checked every this many iterations (a decomposition of the small projected
#: matrices each time, which for many maps at once costs more than a few iterations).
CHECK_EVERY = 16
#: Golub-Kahan's projected matrices are bidiagonal, cheap to decompose: checked this often.
CHECK_SINGULAR_EVERY = 8


#: Relative residual at which a largest singular value counts as converged: its error is at
#: most the residual (a Ritz value of the symmetric ``[[0, J], [J^T, 0]]``), often far less.
SIGMA_TOLERANCE = 1e-3
#: Relative residual at which a spectral radius counts as converged. Its error is not bounded
#: by the residual (Jacobians are not normal) but measured against dense eigenvalues: at most
#: of the order of the residual (tests/test_krylov.py; at 4096 dimensions, where MAX_DIMENSION
#: leaves residuals near 2e-2, within 0.3%: benchmarks/bench_spectra.py).
RADIUS_TOLERANCE = 1e-3
#: A second Gram-Schmidt pass runs where the first removed more than this share of the norm.
REORTHOGONALISE_BELOW = 0.7


@dataclass(frozen=True)
class KrylovEstimate:
    """One estimate per map, its relative residual, and the Krylov dimension reached."""

    values: Tensor
    residuals: Tensor
    dimension: int
    tolerance: float

    @property
    def converged(self) -> Tensor:
        """Which maps' residuals met the tolerance the estimate was run with."""
        return self.residuals <= self.tolerance


def bytes_per_map(n: int, dimension: int, dtype: torch.dtype) -> int:
    """The memory one map's two Krylov bases of ``dimension + 1`` vectors of size ``n`` and
    its projected matrix take."""
    return (2 * n + dimension) * (dimension + 1) * torch.finfo(dtype).bits // 8


def rows_within(budget_bytes: int, n: int, dimension: int, dtype: torch.dtype) -> int:
    """How many maps' Krylov bases fit in ``budget_bytes`` (at least one)."""
    return max(1, budget_bytes // bytes_per_map(n, dimension, dtype))


def _unit_rows(rows: Tensor) -> tuple[Tensor, Tensor]:
    norms = rows.norm(dim=-1)
    return rows / norms.clamp_min(torch.finfo(rows.dtype).tiny)[:, None], norms


def _projected_out(basis: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    coefficients = torch.bmm(w[:, None, :], basis.transpose(1, 2))  # (M, 1, j)
    return w - torch.bmm(coefficients, basis)[:, 0], coefficients[:, 0]


def _orthogonalised(basis: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """``w`` (M, n) without its components along the orthonormal rows of ``basis`` (M, j, n),
    by classical Gram-Schmidt, repeated once where it cancelled much of ``w``; returns it and
    the coefficients (M, j).

    The DGKS criterion: where the second pass cancels much of what the first left, what is
    left is rounding, ``w`` lies in the span of the basis (the Krylov space is invariant), and
    it is set to zero, so that the iteration sees the breakdown instead of rounding scaled up
    to a unit vector (low-rank Jacobians: dead ReLU units, saturated gates).
    """
    if basis.shape[1] == 0:
        return w, w.new_zeros(len(w), 0)
    before = w.norm(dim=-1)
    w, coefficients = _projected_out(basis, w)
    once = w.norm(dim=-1)
    if bool((once < REORTHOGONALISE_BELOW * before).any()):
        w, correction = _projected_out(basis, w)
        coefficients = coefficients + correction
        in_span = (once < REORTHOGONALISE_BELOW * before) & (
            w.norm(dim=-1) < REORTHOGONALISE_BELOW * once
        )
        w = torch.where(in_span[:, None], torch.zeros_like(w), w)
    return w, coefficients


def _finite_part(matrices: Tensor) -> tuple[Tensor, Tensor]:
    """The projected matrices with those holding Inf or NaN (a map whose products overflowed)
    set to zero, which LAPACK accepts, and a mask of them: their estimates are NaN."""
    broken = ~torch.isfinite(matrices).flatten(1).all(dim=1)
    return torch.where(broken[:, None, None], torch.zeros_like(matrices), matrices), broken


def _eigenvalues(matrices: Tensor) -> Tensor:
    """The eigenvalues of a batch of small matrices, on the CPU split across threads (LAPACK
    solves them one at a time)."""
    workers = min(torch.get_num_threads(), len(matrices) // 16)
    if matrices.device.type != "cpu" or workers < 2:
        return torch.linalg.eigvals(matrices)
    with ThreadPoolExecutor(workers) as pool:
        return torch.cat(list(pool.map(torch.linalg.eigvals, matrices.chunk(workers))))


def _last_component(hessenberg: Tensor, eigenvalues: Tensor) -> Tensor:
    """``|y_k|`` of the unit eigenvector ``y`` of each upper Hessenberg matrix (M, k, k) for
    its eigenvalue: with ``y_k = 1``, rows 2..k of ``(H - theta I) y = 0`` are triangular in
    ``y_1..y_{k-1}`` (the subdiagonal on their diagonal), so one triangular solve gives ``y``.
    Where the solve breaks down (a zero subdiagonal: an invariant subspace), 0."""
    k = hessenberg.shape[-1]
    if k == 1:
        return torch.ones_like(eigenvalues.real)
    shifted = hessenberg.to(eigenvalues.dtype) - eigenvalues[:, None, None] * torch.eye(
        k, dtype=eigenvalues.dtype, device=eigenvalues.device
    )
    leading = torch.linalg.solve_triangular(shifted[:, 1:, :-1], -shifted[:, 1:, -1:], upper=True)[
        ..., 0
    ]
    length = torch.sqrt(1 + leading.abs().pow(2).sum(dim=-1))
    return torch.where(torch.isfinite(length), 1 / length, torch.zeros_like(length))


class _Batch:
    """The maps still iterating: their numbers, their products, and the per-map tensors of a
    Krylov iteration, compacted when enough of them have converged."""

    def __init__(self, products_of: ProductsOf, m: int, device: torch.device, **state: Tensor):
        self.products_of = products_of
        self.index = torch.arange(m, device=device)
        self.products = products_of(self.index)
        self.state = state

    def __len__(self) -> int:
        return len(self.index)

    def settle(self, done: Tensor) -> bool:
        """Drop the maps ``done`` (a mask over the batch) once they are a quarter of it or
        more; whether any are left."""
        if bool(done.all()):
            return False
        if 4 * int(done.sum()) >= len(self):
            keep = ~done
            self.index = self.index[keep]
            self.state = {name: tensor[keep] for name, tensor in self.state.items()}
            self.products = self.products_of(self.index)
        return True


def spectral_radii(
    products_of: ProductsOf,
    start: Tensor,
    tolerance: float = RADIUS_TOLERANCE,
    max_dimension: int = MAX_DIMENSION,
) -> KrylovEstimate:
    """Largest eigenvalue modulus of each map, by Arnoldi from the rows of ``start`` (M, n).

    The estimate is the largest-modulus eigenvalue of the projected Hessenberg matrix; its
    residual is ``h_{k+1,k} |y_k| / |theta|`` for the Ritz vector ``y`` of unit norm.
    """
    m, n = start.shape
    limit = min(max_dimension, n)
    basis = start.new_zeros(m, limit + 1, n)
    basis[:, 0] = _unit_rows(start)[0]
    batch = _Batch(
        products_of, m, start.device, basis=basis, hessenberg=start.new_zeros(m, limit + 1, limit)
    )
    values = start.new_full((m,), float("nan"))
    residuals = start.new_full((m,), float("inf"))
    tiny = torch.finfo(start.dtype).tiny
    for j in range(limit):
        basis, hessenberg = batch.state["basis"], batch.state["hessenberg"]
        w, coefficients = _orthogonalised(basis[:, : j + 1], batch.products.push(basis[:, j]))
        hessenberg[:, : j + 1, j] = coefficients
        basis[:, j + 1], beta = _unit_rows(w)
        hessenberg[:, j + 1, j] = beta
        if ((j + 1) % CHECK_EVERY or j + 1 < MIN_DIMENSION) and j + 1 < limit:
            continue
        projected, broken = _finite_part(hessenberg[:, : j + 1, : j + 1])
        eigenvalues = _eigenvalues(projected)
        top = eigenvalues.gather(-1, eigenvalues.abs().argmax(dim=-1, keepdim=True))[:, 0]
        residual = beta * _last_component(projected, top) / top.abs().clamp_min(tiny)
        residual = torch.where(beta <= tiny, torch.zeros_like(residual), residual)
        top = torch.where(broken, torch.full_like(top, float("nan")), top)
        residual = torch.where(broken, torch.full_like(residual, float("nan")), residual)
        # a value that moved since the last check may be a lesser eigenvalue converging
        # before the largest has emerged: it is not taken yet
        steady = (top.abs() - values[batch.index]).abs() <= tolerance * top.abs()
        values[batch.index], residuals[batch.index] = top.abs(), residual
        if not batch.settle(((residual <= tolerance) & (steady | (beta <= tiny))) | broken):
            break
    return KrylovEstimate(values, residuals, j + 1, tolerance)


def largest_singular_values(
    products_of: ProductsOf,
    start: Tensor,
    tolerance: float = SIGMA_TOLERANCE,
    max_dimension: int = MAX_DIMENSION,
) -> KrylovEstimate:
    """Largest singular value of each map, by Golub-Kahan bidiagonalisation with full
    reorthogonalisation from the rows of ``start`` (M, n).

    ``J V_k = U_k B_k`` and ``J^T U_k = V_k B_k^T + beta_k v_{k+1} e_k^T`` for the upper
    bidiagonal ``B_k``; for its top singular triplet ``(sigma, p, q)`` the residual of
    ``(sigma, U p, V q)`` is ``beta_k |p_k|``, reported relative to sigma.
    """
    m, n = start.shape
    limit = min(max_dimension, n)
    right = start.new_zeros(m, limit + 1, n)
    right[:, 0] = _unit_rows(start)[0]
    batch = _Batch(
        products_of,
        m,
        start.device,
        right=right,
        left=start.new_zeros(m, limit, n),
        bidiagonal=start.new_zeros(m, limit, limit),
    )
    values = start.new_full((m,), float("nan"))
    residuals = start.new_full((m,), float("inf"))
    tiny = torch.finfo(start.dtype).tiny
    for j in range(limit):
        right, left = batch.state["right"], batch.state["left"]
        bidiagonal = batch.state["bidiagonal"]
        u, _ = _orthogonalised(left[:, :j], batch.products.push(right[:, j]))
        left[:, j], alpha = _unit_rows(u)
        v, _ = _orthogonalised(right[:, : j + 1], batch.products.pull(left[:, j]))
        right[:, j + 1], beta = _unit_rows(v)
        bidiagonal[:, j, j] = alpha
        if j + 1 < limit:
            bidiagonal[:, j, j + 1] = beta
        if ((j + 1) % CHECK_SINGULAR_EVERY or j + 1 < MIN_DIMENSION) and j + 1 < limit:
            continue
        projected, broken = _finite_part(bidiagonal[:, : j + 1, : j + 1])
        vectors, sigmas, _ = torch.linalg.svd(projected)
        residual = beta * vectors[:, j, 0].abs() / sigmas[:, 0].clamp_min(tiny)
        exhausted = (beta <= tiny) | (alpha <= tiny)
        residual = torch.where(exhausted, torch.zeros_like(residual), residual)
        sigmas = torch.where(broken[:, None], torch.full_like(sigmas, float("nan")), sigmas)
        residual = torch.where(broken, torch.full_like(residual, float("nan")), residual)
        values[batch.index], residuals[batch.index] = sigmas[:, 0], residual
        if not batch.settle((residual <= tolerance) | broken):
            break
    return KrylovEstimate(values, residuals, j + 1, tolerance)
