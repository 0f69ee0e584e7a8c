"""Shared by the format tests in tests/loading: every checkpoint format a user may have, each
file built there, each checked against the model.

A format is read right when gradscope's numbers for the file equal its numbers for the model
object the file was saved from: the same cores, the same exponents and spectra, and, where the
whole model runs, the same input gradient.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradscope.cli import main

STEPS = 16


def seeded(factory, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return factory()


def assert_same_dynamics(got, want, rel: float = 1e-9) -> None:
    """Two cores are one map on one trajectory: exponents and spectra agree."""
    assert got.cell == want.cell and got.state_size == want.state_size
    assert got.lyapunov == pytest.approx(want.lyapunov, rel=rel, abs=1e-12)
    for key in ("spectral_radius", "sigma_max"):
        assert getattr(got.jacobian, key).median == pytest.approx(
            getattr(want.jacobian, key).median, rel=rel
        )


def one_line_error(args: list[str], capsys) -> str:
    code = main(args)
    captured = capsys.readouterr()
    assert code == 2, captured
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    return captured.err
