"""Wide states: spectra matrix-free at every step, the same numbers as dense ones."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import gradscope
from gradscope.errors import GradscopeError
from gradscope.recurrent import measure as recurrent_measure

from tests.helpers.models import CellLoop, TanhCell, build

STEPS = 16
#: Dense against matrix-free medians: sigma max to its tolerance, the radius to about its
#: residual (tests/test_krylov.py).
AGREEMENT = 3e-3


def analysed(model, **options):
    return gradscope.analyze(model, steps=STEPS, what_if=False, **options)


def test_above_the_dense_size_every_step_gets_a_matrix_free_spectrum(monkeypatch):
    model = build(lambda: nn.LSTM(8, 120))  # state 240
    wide = analysed(model).recurrent[0]
    assert wide.jacobian.method == "krylov"
    assert wide.jacobian.samples == STEPS
    assert wide.jacobian.residual.sigma_max <= 1e-3
    monkeypatch.setattr(recurrent_measure, "DENSE_UP_TO", 10_000)
    dense = analysed(model).recurrent[0]
    assert dense.jacobian.method == "dense" and dense.jacobian.residual is None
    for quantity in ("spectral_radius", "sigma_max"):
        for statistic in ("median", "max"):
            assert getattr(getattr(wide.jacobian, quantity), statistic) == pytest.approx(
                getattr(getattr(dense.jacobian, quantity), statistic), rel=AGREEMENT
            )
    assert wide.lyapunov == pytest.approx(dense.lyapunov, rel=1e-12)


def test_a_custom_cell_gets_matrix_free_spectra_through_autograd(monkeypatch):
    model = build(lambda: CellLoop(TanhCell(4, 220)))
    wide = gradscope.analyze(
        model, steps=STEPS, what_if=False, cells=("cell",), input_shape=(1, STEPS, 4)
    ).recurrent[0]
    assert wide.jacobian.method == "krylov" and wide.jacobian.samples == STEPS
    monkeypatch.setattr(recurrent_measure, "DENSE_UP_TO", 10_000)
    dense = gradscope.analyze(
        model, steps=STEPS, what_if=False, cells=("cell",), input_shape=(1, STEPS, 4)
    ).recurrent[0]
    assert wide.jacobian.sigma_max.median == pytest.approx(
        dense.jacobian.sigma_max.median, rel=AGREEMENT
    )
    assert wide.jacobian.spectral_radius.median == pytest.approx(
        dense.jacobian.spectral_radius.median, rel=AGREEMENT
    )


def test_the_json_says_how_the_spectra_were_taken():
    report = json.loads(analysed(build(lambda: nn.GRU(4, 200))).to_json())
    jacobian = report["recurrent"][0]["jacobian"]
    assert jacobian["method"] == "krylov"
    assert set(jacobian["residual"]) == {"spectral_radius", "sigma_max"}
    assert jacobian["samples"] == STEPS


def test_a_memory_budget_chunks_the_work_to_the_same_numbers():
    model = build(lambda: nn.GRU(4, 200))
    roomy = analysed(model).recurrent[0]
    tight = analysed(model, max_memory="2MB").recurrent[0]
    assert tight.jacobian.sigma_max.median == pytest.approx(
        roomy.jacobian.sigma_max.median, rel=AGREEMENT
    )


@pytest.mark.parametrize("size", [64, 200])
def test_auto_spectra_cover_every_step(size):
    core = analysed(build(lambda: nn.RNN(4, size))).recurrent[0]
    assert core.jacobian.samples == STEPS
    assert torch.tensor(core.lyapunov).isfinite().all()


def test_a_memory_budget_too_small_for_one_step_is_one_clear_error():
    with pytest.raises(GradscopeError, match=r"give --max-memory 1MB or more"):
        analysed(build(lambda: nn.GRU(4, 200)), max_memory="100KB")


def test_with_a_batch_auto_takes_one_element_per_step_in_turn():
    core = analysed(build(lambda: nn.GRU(4, 200)), batch=3).recurrent[0]
    assert (core.jacobian.method, core.jacobian.samples) == ("krylov", STEPS)
    every = analysed(build(lambda: nn.GRU(4, 200)), batch=3, spectrum_steps="all").recurrent[0]
    assert every.jacobian.samples == 3 * STEPS
    assert every.jacobian.sigma_max.max >= core.jacobian.sigma_max.max * (1 - 1e-3)


def test_max_memory_as_a_number_of_bytes():
    model = build(lambda: nn.GRU(4, 200))
    assert analysed(model, max_memory=2e6).recurrent[0].jacobian.samples == STEPS
    with pytest.raises(GradscopeError, match="--max-memory must be a positive size"):
        analysed(model, max_memory=-5)


def test_dense_spectra_in_chunks_are_the_same_numbers(monkeypatch):
    model = build(lambda: nn.LSTM(4, 40))  # state 80: dense
    whole = analysed(model, spectrum_steps="all", batch=3).recurrent[0]
    chunked = analysed(model, spectrum_steps="all", batch=3, max_memory=80 * 80 * 8 * 5)
    assert whole.jacobian.method == "dense" and whole.jacobian.samples == 3 * STEPS
    assert chunked.recurrent[0].jacobian == whole.jacobian
