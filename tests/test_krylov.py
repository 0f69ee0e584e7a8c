"""Matrix-free spectra against dense eigen- and singular values, their oracle."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradscope.krylov import (
    MAX_DIMENSION,
    SIGMA_TOLERANCE,
    Products,
    bytes_per_map,
    largest_singular_values,
    rows_within,
    spectral_radii,
)
from gradscope.numerics import largest_singular_value, spectral_radius
from gradscope.recurrent.dynamics import autograd_linearisation, matrix_free_spectra
from gradscope.recurrent.linearised import jacobian_function, linearisation

from tests.helpers.trajectories import Trajectory
from tests.helpers.trajectories import trajectory as cell_trajectory


def products(matrices: torch.Tensor):
    """``products_of`` a stack of dense matrices, row by row; it counts the rows it serves."""

    def products_of(index):
        chosen = matrices[index]
        served.append(len(index))
        return Products(
            push=lambda v: torch.bmm(chosen, v[..., None])[..., 0],
            pull=lambda w: torch.bmm(chosen.transpose(1, 2), w[..., None])[..., 0],
        )

    served = []
    products_of.served = served
    return products_of


def test_a_full_krylov_space_gives_the_exact_values():
    torch.manual_seed(0)
    matrices = torch.randn(5, 30, 30, dtype=torch.float64) / 30**0.5
    start = torch.randn(5, 30, dtype=torch.float64)
    radius = spectral_radii(products(matrices), start, tolerance=0.0, max_dimension=30)
    sigma = largest_singular_values(products(matrices), start, tolerance=0.0, max_dimension=30)
    assert torch.allclose(radius.values, spectral_radius(matrices), rtol=1e-10)
    assert torch.allclose(sigma.values, largest_singular_value(matrices), rtol=1e-10)
    assert radius.dimension == sigma.dimension == 30


def test_a_separated_top_eigenvalue_converges_to_the_tolerance_early():
    torch.manual_seed(1)
    n = 400
    q = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))[0]
    diagonal = torch.linspace(0.1, 0.5, n, dtype=torch.float64)
    diagonal[-1] = 0.9  # one eigenvalue well above the rest
    noise = 0.01 * torch.randn(n, n, dtype=torch.float64) / n**0.5
    matrix = (q * diagonal) @ q.T + noise
    matrices = matrix.expand(3, n, n)
    start = torch.randn(3, n, dtype=torch.float64)
    radius = spectral_radii(products(matrices), start, tolerance=1e-8)
    sigma = largest_singular_values(products(matrices), start, tolerance=1e-8)
    assert bool(radius.converged.all()) and bool(sigma.converged.all())
    assert radius.dimension < 80 and sigma.dimension < 80
    assert torch.allclose(radius.values, spectral_radius(matrices), rtol=1e-8)
    assert torch.allclose(sigma.values, largest_singular_value(matrices), rtol=1e-8)


def test_a_complex_top_pair_gives_its_modulus():
    angle = torch.tensor(0.7, dtype=torch.float64)
    rotation = torch.stack(
        [torch.stack([angle.cos(), -angle.sin()]), torch.stack([angle.sin(), angle.cos()])]
    )
    matrix = torch.block_diag(1.3 * rotation, torch.diag(torch.tensor([0.5, -0.2, 0.1])))
    matrix = matrix.to(torch.float64)[None]
    radius = spectral_radii(products(matrix), torch.ones(1, 5, dtype=torch.float64), tolerance=0.0)
    assert radius.values.item() == pytest.approx(1.3, rel=1e-12)


def test_a_map_that_annihilates_everything_has_radius_and_sigma_zero():
    zero = torch.zeros(2, 8, 8, dtype=torch.float64)
    start = torch.randn(2, 8, dtype=torch.float64)
    radius = spectral_radii(products(zero), start)
    sigma = largest_singular_values(products(zero), start)
    assert radius.values.tolist() == [0.0, 0.0] and sigma.values.tolist() == [0.0, 0.0]
    assert bool(radius.converged.all()) and bool(sigma.converged.all())


def test_a_map_whose_products_overflow_gets_nan_and_the_others_their_values():
    torch.manual_seed(4)
    good = torch.randn(20, 20, dtype=torch.float64) / 20**0.5
    matrices = torch.stack([good, torch.full((20, 20), float("inf"), dtype=torch.float64)])
    start = torch.randn(2, 20, dtype=torch.float64)
    radius = spectral_radii(products(matrices), start, tolerance=0.0, max_dimension=20)
    sigma = largest_singular_values(products(matrices), start, tolerance=0.0, max_dimension=20)
    assert radius.values[0] == pytest.approx(float(spectral_radius(good)), rel=1e-10)
    assert sigma.values[0] == pytest.approx(float(largest_singular_value(good)), rel=1e-10)
    assert radius.values[1].isnan() and sigma.values[1].isnan()


def test_maps_that_converge_leave_the_batch():
    torch.manual_seed(3)
    n = 200
    easy = torch.diag(torch.linspace(0.1, 0.2, n, dtype=torch.float64))
    easy[0, 0] = 0.9  # converges within a few iterations
    hard = torch.randn(n, n, dtype=torch.float64) / n**0.5  # a disc of eigenvalues
    matrices = torch.stack([easy, easy, easy, hard])
    products_of = products(matrices)
    start = torch.randn(4, n, dtype=torch.float64)
    radius = spectral_radii(products_of, start, tolerance=1e-6)
    assert products_of.served[0] == 4 and products_of.served[-1] == 1
    assert torch.allclose(radius.values[:3], torch.tensor(0.9, dtype=torch.float64))
    assert radius.values[3] == pytest.approx(float(spectral_radius(hard)), rel=3e-3)
    sigma = largest_singular_values(products(matrices), start, tolerance=1e-6)
    assert torch.allclose(sigma.values, largest_singular_value(matrices), rtol=1e-6)


def test_the_memory_budget_sets_how_many_maps_go_at_once():
    per_map = (2 * 1000 + 80) * 81 * 8  # two bases of 81 vectors, the projected matrix
    assert rows_within(10 * per_map, 1000, 80, torch.float64) == 10
    assert rows_within(1, 1000, 80, torch.float64) == 1
    assert rows_within(10 * per_map, 1000, 80, torch.float32) == 20


CELLS = {
    "rnn_tanh": lambda size: nn.RNN(16, size),
    "lstm": lambda size: nn.LSTM(16, size // 2),
    "lstm_proj": lambda size: nn.LSTM(16, size, proj_size=size // 4),
    "gru": lambda size: nn.GRU(16, size),
}


def trajectory(name: str, size: int, dtype: torch.dtype) -> Trajectory:
    """States and drives of a randomly initialised cell (the hardest case for Arnoldi: its
    Jacobians' eigenvalues fill a disc, with no gap at the top)."""
    torch.manual_seed(2)
    return cell_trajectory(CELLS[name](size).to(dtype), steps=12, skip=2)


#: Errors against dense spectra on these cells at 200-400 dimensions: sigma max within its
#: tolerance (measured: 1e-6 and below), the spectral radius within 3e-3 (measured: 2.4e-3
#: and below).
SIGMA_ERROR, RADIUS_ERROR = SIGMA_TOLERANCE, 3e-3


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", sorted(CELLS))
def test_matrix_free_spectra_of_cells_match_dense_ones(name, dtype):
    spec, weights, _, states, drives = trajectory(name, 256, dtype)
    spectra = matrix_free_spectra(
        lambda s, u: linearisation(spec, weights, s, u), states, drives, 1 << 26
    )
    jacobians = jacobian_function(spec, weights)(states, drives)
    radius, sigma = spectral_radius(jacobians), largest_singular_value(jacobians)
    assert spectra.sigma_max.values.shape == (len(states),)
    assert ((spectra.sigma_max.values - sigma) / sigma).abs().max() <= SIGMA_ERROR
    assert ((spectra.spectral_radius.values - radius) / radius).abs().max() <= RADIUS_ERROR
    # Ritz values of J^T J lie below its largest eigenvalue
    assert bool((spectra.sigma_max.values <= sigma * (1 + 1e-5)).all())
    assert spectra.sigma_max.residuals.max() <= SIGMA_TOLERANCE


def test_low_rank_jacobians_break_down_to_their_exact_spectra():
    # 230 of 256 ReLU units dead: J_t = diag(slope_t) W_hh has rank 26, and the Krylov space
    # becomes invariant long before the first check; what is left then is rounding
    torch.manual_seed(5)
    module = nn.RNN(8, 256, nonlinearity="relu").double()
    with torch.no_grad():
        module.bias_hh_l0[:230] = -50.0
    spec, weights, _, states, drives = cell_trajectory(module, steps=12, skip=2)
    spectra = matrix_free_spectra(
        lambda s, u: linearisation(spec, weights, s, u), states, drives, 1 << 26
    )
    jacobians = jacobian_function(spec, weights)(states, drives)
    assert torch.allclose(spectra.spectral_radius.values, spectral_radius(jacobians), rtol=1e-9)
    assert torch.allclose(spectra.sigma_max.values, largest_singular_value(jacobians), rtol=1e-9)


def test_chunks_of_maps_give_what_one_batch_gives():
    spec, weights, _, states, drives = trajectory("gru", 200, torch.float64)

    def linearise(s, u):
        return linearisation(spec, weights, s, u)

    def seeded():
        return torch.Generator().manual_seed(0)

    whole = matrix_free_spectra(linearise, states, drives, 1 << 30, seeded())
    one_map = bytes_per_map(states.shape[-1], MAX_DIMENSION, states.dtype)
    one_at_a_time = matrix_free_spectra(linearise, states, drives, one_map, seeded())
    dense = largest_singular_value(jacobian_function(spec, weights)(states, drives))
    assert torch.allclose(whole.sigma_max.values, dense, rtol=SIGMA_ERROR)
    assert torch.allclose(one_at_a_time.sigma_max.values, dense, rtol=SIGMA_ERROR)


def test_autograd_linearisation_of_a_step_matches_its_closed_form():
    spec, weights, step, states, drives = trajectory("lstm", 64, torch.float64)
    closed = linearisation(spec, weights, states, drives)
    traced = autograd_linearisation(step, states, drives)
    v = torch.randn_like(states)
    assert torch.allclose(traced.push(v), closed.push(v), atol=1e-12)
    assert torch.allclose(traced.pull(v), closed.pull(v), atol=1e-12)
    assert torch.allclose(traced.pull(2 * v), 2 * closed.pull(v), atol=1e-12)  # graph reused


def test_a_step_that_ignores_its_state_pulls_back_zeros():
    states = torch.randn(3, 5, dtype=torch.float64)
    traced = autograd_linearisation(lambda s, u: u, states, torch.randn(3, 5))
    assert traced.pull(torch.ones(3, 5)).abs().max() == 0


def test_no_maps_give_empty_estimates():
    spectra = matrix_free_spectra(
        lambda s, u: None, torch.zeros(0, 300), torch.zeros(0, 4), 1 << 20
    )
    assert spectra.spectral_radius.values.numel() == 0
    assert spectra.sigma_max.values.numel() == 0
