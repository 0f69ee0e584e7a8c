"""``--only``: measure the selected recurrent modules of a large model, report the rest as left
out (never as healthy)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradscope
from gradscope.cli import main
from gradscope.errors import GradscopeError
from gradscope.options import AnalysisOptions


class EncoderDecoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.LSTM(4, 16)
        self.decoder = nn.GRU(16, 8)

    def forward(self, x):
        return self.decoder(self.encoder(x)[0])[0]


def model() -> nn.Module:
    torch.manual_seed(0)
    return EncoderDecoder().double()


@pytest.mark.parametrize(
    ("patterns", "path", "selected"),
    [
        ((), "anything", True),
        (("decoder",), "decoder", True),
        (("decoder",), "decoder.cell", True),
        (("decoder",), "decoder2", False),
        (("enc*",), "encoder", True),
        (("*.cell",), "stack.0.cell", True),
        (("*",), "", True),
        (("encoder",), "", False),
        (("encoder",), "net.encoder", True),
        (("encoder",), "net.encoder.cell", True),
        (("net.encoder",), "encoder", False),
        (("layers.[12]",), "layers.1", True),
        (("layers.[12]",), "layers.1.mlp.fc", True),  # inside a block the glob names
        (("layers.[12]",), "layers.3.mlp.fc", False),
        (("layers.?",), "model.layers.4.attn", True),
        (("(model)",), "encoder", False),
    ],
)
def test_only_selects_by_path_glob_or_holder(patterns, path, selected):
    assert AnalysisOptions(only=patterns).selects(path) is selected


def test_only_measures_the_selected_core_and_reports_the_rest_left_out():
    whole = gradscope.analyze(model(), steps=10, what_if=False)
    only = gradscope.analyze(model(), steps=10, what_if=False, only="decoder")
    assert [core.name for core in only.recurrent] == ["decoder"]
    decoder = next(core for core in whole.recurrent if core.name == "decoder")
    assert only.recurrent[0].lyapunov == pytest.approx(decoder.lyapunov, rel=1e-12)
    (left_out,) = only.coverage.not_measured
    assert left_out.reason == "left out by --only" and left_out.modules == ["encoder (LSTM)"]
    assert not only.complete
    assert "in what was measured" in only.summary()


def test_only_that_selects_nothing_names_the_cores():
    with pytest.raises(GradscopeError, match=r"selects none .*\(encoder, decoder\)"):
        gradscope.analyze(model(), steps=10, what_if=False, only="attention*")


def test_only_on_the_command_line(tmp_path, capsys):
    path = tmp_path / "model.pt"
    torch.save(model().state_dict(), path)
    code = main(["analyze", str(path), "--only", "nothing", "--steps", "5"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.count("\n") == 1 and "--only nothing selects none" in captured.err


def tanh_stack() -> nn.Module:
    torch.manual_seed(0)
    layers = []
    for _ in range(10):
        layers += [nn.Linear(16, 16), nn.Tanh()]
    return nn.Sequential(*layers).double()


def test_only_measures_a_run_of_blocks_as_a_stack_of_its_own():
    whole = gradscope.analyze(tanh_stack(), input_shape=(8, 16), what_if=False)
    only = gradscope.analyze(tanh_stack(), input_shape=(8, 16), what_if=False, only="[4-9]")
    assert [layer.name for layer in only.layers] == ["4+5", "6+7", "8+9"]
    for got, want in zip(only.layers, whole.layers[2:5], strict=True):
        assert got.grad_norm == pytest.approx(want.grad_norm, rel=1e-12)
    # from the first selected block's input to the last one's output, not the model's
    below = whole.layers[1].grad_norm
    assert only.stack.decades == pytest.approx(
        math.log10(below / whole.layers[4].grad_norm), rel=1e-12
    )
    (left_out,) = only.coverage.not_measured
    assert left_out.reason == "left out by --only" and "0 (Linear)" in left_out.modules
    # the whole model's input-output Jacobian is not the selected run's: not reported as it
    assert only.stack.sigma_max is None and only.stack.spread is None
    assert whole.stack.sigma_max is not None


def test_only_refuses_blocks_that_do_not_run_one_after_another():
    with pytest.raises(GradscopeError, match="do not run one after another"):
        gradscope.analyze(tanh_stack(), input_shape=(8, 16), what_if=False, only=("2", "12"))
