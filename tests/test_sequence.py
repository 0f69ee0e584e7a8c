"""The sequence view: the input gradient by lag from the step the loss reads, checked against
autograd step by step, and its effective horizon on models whose reach is known."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

import gradscope
from gradscope.diagnosis.sequence import effective_horizon
from gradscope.errors import GradscopeError
from gradscope.probe import Probe
from gradscope.sequence import measure_sequence

from tests.helpers import reference
from tests.helpers.models import Classifier, build, orthogonal, rnn_with_recurrence

STEPS = 16
BATCH = 3


class CausalConv(nn.Module):
    """Causal temporal convolutions (left padding): the output at t reads inputs t-k+1..t,
    k = 1 + (kernel - 1) * sum(dilations)."""

    def __init__(self, kernel: int = 3, dilations: tuple[int, ...] = (1, 2)) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv1d(4 if i == 0 else 8, 8, kernel, dilation=d) for i, d in enumerate(dilations)
        )
        self.head = nn.Conv1d(8, 2, 1)
        self.kernel, self.dilations = kernel, dilations

    @property
    def reach(self) -> int:
        return 1 + (self.kernel - 1) * sum(self.dilations)

    def forward(self, x: Tensor) -> Tensor:  # (B, 4, T) -> (B, 2, T)
        h = x
        for conv in self.convs:
            h = torch.tanh(conv(F.pad(h, ((self.kernel - 1) * conv.dilation[0], 0))))
        return self.head(h)


def probe(x: Tensor, seed: int = 0) -> Probe:
    return Probe(
        inputs=x.requires_grad_(True), time_axis=2, batch_axis=0, kind="gaussian", seed=seed
    )


def autograd_by_lag(model: nn.Module, x: Tensor, step: int, seed: int = 0) -> list[float]:
    """||dL/dx_{step-k}|| pooled over the batch, L = sum_b <w, y_b,step>, by plain autograd."""
    x = x.detach().requires_grad_(True)
    y = model(x)[:, :, step]
    (grad,) = torch.autograd.grad((y @ reference.unit_projection(y.shape[-1], seed)).sum(), x)
    norms = grad.pow(2).sum(1).mean(0).sqrt()  # (T,)
    return norms[: step + 1].flip(0).tolist()


@pytest.mark.parametrize("loss_at", ["last", 9, -4])
def test_the_gradient_by_lag_is_autograds_per_step_input_gradient(loss_at):
    model = build(CausalConv)
    x = torch.randn(
        BATCH, 4, STEPS, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    found = measure_sequence(model, probe(x.clone()), loss_at)
    step = STEPS - 1 if loss_at == "last" else loss_at % STEPS
    assert found.grad_norm_by_lag == pytest.approx(autograd_by_lag(model, x, step), rel=1e-12)


def test_a_loss_at_every_step_pools_each_steps_own_loss_by_lag():
    model = build(lambda: CausalConv(dilations=(1, 2, 4)))
    x = torch.randn(
        BATCH, 4, STEPS, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
    )
    found = measure_sequence(model, probe(x.clone()), "all")
    rows = [autograd_by_lag(model, x, step) for step in range(STEPS)]
    expected = [
        math.sqrt(sum(row[lag] ** 2 for row in rows if len(row) > lag) / (STEPS - lag))
        for lag in range(STEPS)
    ]
    assert found.grad_norm_by_lag == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("dilations", [(1,), (1, 2), (1, 2, 4)])
def test_a_causal_model_that_sees_k_steps_has_horizon_k(dilations):
    model = build(lambda: CausalConv(dilations=dilations))
    report = gradscope.analyze(model, input_shape=(4, 4, 30), horizon=20)
    view = report.sequence
    assert view.effective_horizon == model.reach
    assert all(norm == 0 for norm in view.grad_norm_by_lag[model.reach :])
    assert view.status == "vanishing" and view.distance == 20
    assert report.status == "vanishing"
    fixes = [fix.id for fix in report.fixes]
    assert fixes == ["receptive-field"]  # never a recurrent cell for a convolution
    assert "dilations = [2 ** i for i in range(5)]" in report.fixes[0].snippet


def test_a_causal_model_that_reaches_the_horizon_is_healthy():
    model = build(lambda: CausalConv(dilations=(1, 2, 4)))
    report = gradscope.analyze(model, input_shape=(4, 4, 30), horizon=model.reach)
    assert report.sequence.status == "healthy" and report.status == "healthy"


def test_an_rnns_sequence_horizon_agrees_with_its_cores():
    torch.manual_seed(0)
    rnn = rnn_with_recurrence(0.8 * orthogonal(12, seed=3)).double()
    with torch.no_grad():  # small inputs: the state stays near the origin, where J = 0.8 Q
        rnn.weight_ih_l0.normal_(0, 0.05)
    report = gradscope.analyze(rnn, steps=80, batch=4)
    (core,) = report.recurrent
    view = report.sequence
    assert view.loss_at == "last" and len(view.grad_norm_by_lag) == 80
    assert view.grad_norm_by_lag == report.input_grad_norm[::-1]
    assert view.effective_horizon == pytest.approx(core.memory_horizon, rel=0.25)
    assert view.status == core.status == "vanishing"


def test_attention_over_the_whole_sequence_reaches_every_step():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, 2).double()
    report = gradscope.analyze(model, input_shape=(2, 24, 8))
    view = report.sequence
    assert view.effective_horizon is None and view.status == "healthy"
    assert "MultiheadAttention" in view.mixers


class TokenWindow(nn.Module):
    """Token ids, an embedding, and a mean over the last 3 steps."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(30, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, ids: Tensor) -> Tensor:
        e = self.embed(ids)
        window = (e + F.pad(e, (0, 0, 1, 0))[:, :-1] + F.pad(e, (0, 0, 2, 0))[:, :-2]) / 3
        return self.out(window)


def test_token_ids_are_judged_at_their_embedding():
    report = gradscope.analyze(build(TokenWindow), steps=20, batch=2)
    assert report.sequence.effective_horizon == 3
    assert len(report.input_grad_norm) == 20


def test_effective_horizon_is_the_last_lag_above_epsilon_of_the_peak():
    assert effective_horizon([1.0, 0.5, 2e-3, 5e-4, 0.0], 1e-3) == 3
    assert effective_horizon([1.0, 0.5, 0.2], 1e-3) is None  # reaches every lag measured
    assert effective_horizon([0.0, 0.0], 1e-3) == 0
    assert effective_horizon([1.0, math.nan], 1e-3) is None


def test_loss_at_outside_the_probe_or_on_an_output_without_time_is_one_line():
    model = build(CausalConv)
    with pytest.raises(GradscopeError, match=r"^--loss-at 40 is outside the probe's 30 steps"):
        gradscope.analyze(model, input_shape=(2, 4, 30), loss_at=40)
    classifier = build(lambda: Classifier(nn.GRU(4, 8, batch_first=True)))
    with pytest.raises(GradscopeError, match=r"^--loss-at 3: the model's output .* no time axis"):
        gradscope.analyze(classifier, steps=10, loss_at=3)
    with pytest.raises(GradscopeError, match=r"^--loss-at must be last, all or a time step"):
        gradscope.analyze(model, loss_at="middle")


def test_the_sequence_section_in_json_and_text(tmp_path, capsys):
    from gradscope.cli import main

    path = tmp_path / "tcn.pt"
    torch.save(build(CausalConv).state_dict(), path)
    args = ["analyze", str(path), "--model", "tests.test_sequence:CausalConv"]
    args += ["--input-shape", "2,4,30", "--loss-at", "all"]
    code = main([*args, "-f", "json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 1
    sequence = data["sequence"]
    assert sequence["loss_at"] == "all" and sequence["effective_horizon"] == 7
    assert sequence["horizon"] == 30 and sequence["status"] == "vanishing"
    assert len(sequence["grad_norm_by_lag"]) == 30

    main(args)
    out = capsys.readouterr().out
    assert "sequence: ‖dL/dx‖ against lag from the loss at each step" in out
    assert "reaches back 7 step(s) (horizon 30)" in out
