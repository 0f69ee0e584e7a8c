"""Models in the style of published libraries: blocks of any call signature are followed by
their stream, residuals counted as a reader of the code would count them, and every count and
gradient checked against autograd."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.functional import jacobian

import gradscope
from gradscope.cli import main
from gradscope.errors import GradscopeError
from gradscope.options import AnalysisOptions
from gradscope.probe import make_probe, projection_loss
from gradscope.report import GradientHealthError

from tests.helpers.library_models import (
    FloatPositional,
    Forecaster,
    GlobalContext,
    GreedyDecoder,
    LoopedCellStack,
    OwnLSTMTagger,
    ParallelScanGRU,
    ParentResiduals,
    PerStepPooled,
    PreNormTransformer,
    ScanBlockStack,
    SharedDepth,
    SteppedScanGRU,
    TemporalConvNet,
    TupleStack,
)


def identity_share(function, x: Tensor) -> float:
    """tr(J)/n of ``function`` at one example of ``x``, by autograd."""
    full = jacobian(lambda row: function(row[None])[0], x[0]).reshape(x[0].numel(), -1)
    return float(torch.trace(full) / full.shape[0])


def stream_gradients(
    model: nn.Module, modules: list[nn.Module], options: AnalysisOptions, index=None
):
    """The pooled gradient norm at each module's stream output (the first output, or the one
    ``index`` names for a module), by autograd on gradscope's own probe and loss."""
    index = index or {}
    probe = make_probe(model, options, torch.device("cpu"))
    outputs = []

    def keep(module, args, output):
        stream = output[index.get(module, 0)] if isinstance(output, tuple) else output
        stream.retain_grad()
        outputs.append(stream)

    handles = [module.register_forward_hook(keep) for module in modules]
    try:
        projection_loss(model(probe.inputs), probe).backward()
    finally:
        for handle in handles:
            handle.remove()
    return [float(o.grad.pow(2).sum() / probe.batch) ** 0.5 for o in outputs]


def test_blocks_returning_a_tuple_are_followed_through_their_stream():
    torch.manual_seed(0)
    model = TupleStack().double()
    report = gradscope.analyze(model, batch=4)

    assert [layer.name for layer in report.layers] == [*(f"blocks.{i}" for i in range(6)), "head"]
    assert [layer.side_outputs for layer in report.layers[:6]] == [
        [f"blocks.{i}[1]"] for i in range(6)
    ]
    x = torch.randn(4, 16, dtype=torch.float64)
    expected = [identity_share(lambda v, b=b: b(v)[0], x) > 0.5 for b in model.blocks]
    assert expected == [True] * 6  # x + tanh(f(x)): an identity path, as the code reads
    assert [layer.residual for layer in report.layers] == [*expected, False]
    assert report.stack.residual_blocks == 6
    twin = stream_gradients(model, [*model.blocks, model.head], AnalysisOptions(batch=4))
    assert [layer.grad_norm for layer in report.layers] == pytest.approx(twin, rel=1e-10)
    assert report.complete


def test_temporal_convolution_blocks_with_skips_and_weight_norm():
    torch.manual_seed(0)
    model = TemporalConvNet().double()
    report = gradscope.analyze(model, input_shape=(8, 3, 40))

    assert [layer.name for layer in report.layers] == [
        "inp",
        *(f"blocks.{i}" for i in range(4)),
        "out",
    ]
    # the stream is what the next block reads; the last block's residual output is dropped
    # (only the skips reach the output), so its stream is the skip, by data flow
    x = torch.randn(2, 8, 40, dtype=torch.float64)
    streams = [lambda v, b=b: b(v)[0] for b in model.blocks[:3]]
    streams.append(lambda v: model.blocks[3](v)[1])
    shares = [identity_share(stream, x) for stream in streams]
    assert [layer.residual for layer in report.layers[1:5]] == [s > 0.5 for s in shares]
    assert report.stack.residual_blocks == 3
    assert [layer.side_outputs for layer in report.layers[1:5]] == [
        ["blocks.0[1]"],
        ["blocks.1[1]"],
        ["blocks.2[1]"],
        ["blocks.3[0]"],
    ]
    assert not report.layers[4].chained  # the output layer reads the summed skips
    options = AnalysisOptions(input_shape=(8, 3, 40))
    modules = [model.inp, *model.blocks, model.out]
    twin = stream_gradients(model, modules, options, {model.blocks[3]: 1})
    assert [layer.grad_norm for layer in report.layers] == pytest.approx(twin, rel=1e-10)
    assert report.complete


def test_a_pre_norm_transformer_with_its_own_layer_norm_and_a_positional_embedding():
    torch.manual_seed(0)
    model = PreNormTransformer().double()
    report = gradscope.analyze(model, batch=4)

    assert report.settings.input_shape == [4, 64]  # token ids, as long as the positions allow
    assert any("64 steps" in note and "pos" in note for note in report.model.notes)
    names = [layer.name for layer in report.layers]
    assert names == [*(f"blocks.{i}" for i in range(4)), "ln_f", "head"]
    x = model.tok(torch.randint(0, 50, (1, 6)))
    mask = torch.ones(6, 6, dtype=torch.bool).tril()
    shares = [identity_share(lambda v, b=b: b(v, mask), x) for b in model.blocks]
    assert [layer.residual for layer in report.layers[:4]] == [s > 0.5 for s in shares]
    assert report.stack.residual_blocks == sum(s > 0.5 for s in shares) == 4
    twin = stream_gradients(
        model, [*model.blocks, model.ln_f, model.head], AnalysisOptions(batch=4)
    )
    assert [layer.grad_norm for layer in report.layers] == pytest.approx(twin, rel=1e-10)
    assert report.coverage.views["lookup"] == ["pos", "tok"]
    assert report.complete


def test_steps_beyond_the_positions_are_refused_with_the_limit():
    with pytest.raises(GradscopeError, match="--steps 64 or fewer"):
        gradscope.analyze(PreNormTransformer(), steps=100)


def test_a_positional_embedding_registered_first_is_not_taken_for_the_input():
    torch.manual_seed(0)
    report = gradscope.analyze(FloatPositional().double(), input_shape=(4, 50, 8))

    assert report.settings.input_shape == [4, 50, 8]
    assert [layer.name for layer in report.layers][-4:] == [
        "blocks.0",
        "blocks.1",
        "blocks.2",
        "head",
    ]
    assert report.stack.residual_blocks == 3
    assert "pos" in report.coverage.views["lookup"]


# --- a recurrence written as a parallel scan -----------------------------------------------------


def test_a_parallel_scan_is_a_recurrence_not_measured_and_fails_the_default_gate(tmp_path, capsys):
    torch.manual_seed(0)
    scan = ParallelScanGRU().double()
    report = gradscope.analyze(scan, input_shape=(4, 50, 8))

    assert report.recurrent == []
    errors = [f for f in report.findings if f.severity == "error"]
    # the sequence view judges it end to end; its step map stays unmeasured
    assert [f.id for f in errors] == ["vanishing-gradient", "not-measured"]
    assert errors[0].where["view"] == "sequence"
    assert "scan over the time axis (cumsum, cumprod)" in errors[1].message
    assert report.fails() and not report.complete
    with pytest.raises(GradientHealthError):
        report.assert_healthy()

    path = tmp_path / "scan.pt"
    torch.save(scan.state_dict(), path)
    model = "tests.helpers.library_models:ParallelScanGRU"
    code = main(["analyze", str(path), "--model", model, "--input-shape", "4,50,8"])
    out = capsys.readouterr().out
    assert code == 1
    assert "in what was measured" in out and "not measured over time" in " ".join(out.split())


def test_the_same_scan_stepped_as_a_cell_is_measured_over_time_and_vanishes():
    torch.manual_seed(0)
    stepped = SteppedScanGRU(ParallelScanGRU().double())
    x = torch.randn(2, 7, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(stepped(x), stepped_source(stepped)(x))

    options = AnalysisOptions(input_shape=(4, 50, 8), cells=("cell",))
    report = gradscope.analyze(stepped, input_shape=(4, 50, 8), cells=("cell",))

    (core,) = report.recurrent
    # J_t = diag(1 - z_t): lambda_1 is the largest time average of ln(1 - z) over the units
    probe = make_probe(stepped, options, torch.device("cpu"))
    log_keep = torch.log1p(-torch.sigmoid(stepped.cell.to_z(probe.inputs))).detach()
    oracle = float(log_keep[:, core.burn_in :].mean(dim=(0, 1)).max())
    assert core.top_exponent == pytest.approx(oracle, rel=0.05)
    assert report.status == "vanishing" and report.complete


def stepped_source(stepped: SteppedScanGRU) -> ParallelScanGRU:
    """A ParallelScanGRU holding the stepped model's own weights."""
    scan = ParallelScanGRU().double()
    scan.to_z, scan.to_h, scan.head = stepped.cell.to_z, stepped.cell.to_h, stepped.head
    return scan


@pytest.mark.parametrize(
    "factory, shape",
    [
        (PerStepPooled, (4, 50, 8)),  # time mixed by a mean only: not a recurrence
        (GlobalContext, (4, 50, 8)),  # the mean over all steps added back: not causal
        (TemporalConvNet, (8, 3, 40)),  # time mixed inside the measured blocks
        (PreNormTransformer, None),  # attention inside the measured blocks
    ],
)
def test_time_mixed_inside_blocks_or_by_pooling_is_no_unmeasured_recurrence(factory, shape):
    report = gradscope.analyze(factory(), input_shape=shape)
    assert not report.coverage.unmeasured_recurrence
    assert not any(f.id == "not-measured" for f in report.findings)


# --- inputs of any structure ----------------------------------------------------------------------


def forecaster_batch(batch: int = 3, steps: int = 20) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(5)
    return {
        "past_target": torch.randn(batch, steps, generator=generator),
        "past_covariates": torch.randn(batch, steps, 3, generator=generator),
        "category": torch.randint(0, 5, (batch,), generator=generator),
    }


def test_a_forecasting_model_reading_a_dict_is_driven_by_a_probe_file(tmp_path, capsys):
    torch.manual_seed(0)
    weights, probe = tmp_path / "forecaster.pt", tmp_path / "batch.pt"
    torch.save(Forecaster().state_dict(), weights)
    torch.save(forecaster_batch(), probe)
    model = "tests.helpers.library_models:Forecaster"

    code = main(["analyze", str(weights), "--model", model, "--probe", str(probe), "-f", "json"])
    data = json.loads(capsys.readouterr().out)

    assert code in (0, 1)
    assert data["settings"]["inputs"] == {
        "past_target": [3, 20],
        "past_covariates": [3, 20, 3],
        "category": [3],
    }
    (core,) = data["recurrent"]
    assert core["name"] == "encoder" and core["steps"] == 20
    assert any("model(probe)" in note for note in data["model"]["notes"])
    # the encoder driven by hand on the same sequence and start state: the same trajectory
    forecaster = Forecaster()
    forecaster.load_state_dict(torch.load(weights))
    batch = forecaster_batch()
    past = torch.cat([batch["past_target"].unsqueeze(-1), batch["past_covariates"]], dim=-1)
    start = forecaster.static(batch["category"]).unsqueeze(0).detach()
    direct = gradscope.analyze(EncoderFrom(forecaster.encoder, start), past.double())
    assert core["lyapunov"] == pytest.approx(direct.recurrent[0].lyapunov, rel=1e-9)


class EncoderFrom(nn.Module):
    """An LSTM run from a fixed start state: ``forward(x)`` alone."""

    def __init__(self, lstm: nn.LSTM, start: Tensor) -> None:
        super().__init__()
        self.lstm = lstm
        self.register_buffer("start", start)

    def forward(self, x: Tensor) -> Tensor:
        return self.lstm(x, (self.start, torch.zeros_like(self.start)))[0]


class KeywordInputs(nn.Module):
    """``forward(x, scale=None)``: a GRU whose output a keyword input scales."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(3, 4, batch_first=True)

    def forward(self, x: Tensor, scale: Tensor | None = None) -> Tensor:
        return self.gru(x)[0] * scale


def test_several_input_shapes_name_keywords(capsys):
    model = KeywordInputs()
    report = gradscope.analyze(model, input_shape=["2,6,3", "scale=2,6,4"])
    assert report.settings.inputs == {"0": [2, 6, 3], "scale": [2, 6, 4]}
    assert report.recurrent[0].steps == 6


# --- recurrences no PyTorch module names ---------------------------------------------------------


def test_a_cell_looped_inside_a_block_is_detected_and_stepped_like_a_named_cell():
    torch.manual_seed(0)
    model = LoopedCellStack().double()

    report = gradscope.analyze(model, input_shape=(2, 20, 4))
    named = gradscope.analyze(model, input_shape=(2, 20, 4), cells=("block.cell",))

    (core,) = report.recurrent
    assert core.name == "block.cell" and core.steps == 20
    assert core.lyapunov == pytest.approx(named.recurrent[0].lyapunov, rel=1e-12)
    assert core.grad_norm == pytest.approx(named.recurrent[0].grad_norm, rel=1e-12)
    assert any(
        note.startswith("detected: block.cell (StepCell), called 20 times")
        for note in report.model.notes
    )
    assert not report.coverage.unmeasured_recurrence


def test_without_detection_a_looped_cell_is_an_unmeasured_recurrence_with_its_flag():
    torch.manual_seed(0)
    model = LoopedCellStack().double()
    report = gradscope.analyze(model, input_shape=(2, 20, 4), detect_cells=False)

    errors = [f for f in report.findings if f.severity == "error"]
    # the sequence view judges the loop end to end; its step map stays unmeasured
    assert [f.id for f in errors] == ["vanishing-gradient", "not-measured"]
    assert errors[0].where["view"] == "sequence"
    assert "block.cell (StepCell)" in errors[1].message and "called 20 times" in errors[1].message
    assert "--cell block.cell" in errors[1].message
    assert report.fails()
    cell_parameters = sum(p.numel() for p in model.block.cell.parameters())
    assert report.coverage.unmeasured_recurrence[0].parameters == cell_parameters


def test_a_scan_inside_stacked_blocks_is_named_by_its_block():
    torch.manual_seed(0)
    report = gradscope.analyze(ScanBlockStack().double(), input_shape=(2, 20, 4))

    recurrences = report.coverage.unmeasured_recurrence
    assert [g.modules for g in recurrences] == [[f"mixers.{i} (ScanMixer)"] for i in range(3)]
    assert all("scan over the time axis (cumsum)" in g.reason for g in recurrences)
    assert report.fails()


def test_weights_shared_over_depth_are_neither_a_recurrence_nor_counted_twice():
    torch.manual_seed(0)
    model = SharedDepth().double()
    report = gradscope.analyze(model, batch=8)

    assert not report.coverage.unmeasured_recurrence
    # four calls of the layers and the output: five blocks, the shared one under its first name
    assert [layer.name for layer in report.layers] == [
        "shared",
        "layers.1",
        "shared",
        "shared",
        "out",
    ]


def test_residuals_added_in_the_parent_are_judged_on_what_the_model_returns():
    torch.manual_seed(0)
    model = ParentResiduals().double()
    report = gradscope.analyze(model, batch=8)

    x = torch.randn(8, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(16, dtype=torch.float64)
    (gradient,) = torch.autograd.grad(model(x) @ (w / w.norm()), x, torch.ones(8))
    # near the identity: the gradient keeps its size from the output to the input
    assert abs(math.log10(float(gradient.norm() / 8**0.5))) < 0.05
    assert abs(report.stack.decades) < 0.05
    assert report.stack.status == "healthy"


def test_a_library_lstm_looping_raw_parameters_is_an_unmeasured_recurrence():
    torch.manual_seed(0)
    report = gradscope.analyze(OwnLSTMTagger().double(), input_shape=(2, 20, 4))

    (group,) = report.coverage.unmeasured_recurrence
    assert group.modules == ["lstm (LSTM)"]
    assert "loops over time steps" in group.reason
    assert report.fails()


def test_a_head_applied_at_every_decoder_step_is_not_a_stack():
    torch.manual_seed(0)
    report = gradscope.analyze(GreedyDecoder().double(), steps=12)

    assert [core.name for core in report.recurrent] == ["encoder", "decoder"]
    assert report.stack is None and report.layers == []
    assert not report.coverage.unmeasured_recurrence


class SharedResidual(nn.Module):
    """One layer applied three times as residual blocks, ``x + layer(x)`` (ALBERT style)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(16, 16)
        self.out = nn.Linear(16, 2)

    def forward(self, x: Tensor) -> Tensor:
        for _ in range(3):
            x = x + torch.tanh(self.layer(x))
        return self.out(x)


def test_a_shared_residual_layer_applied_over_depth_keeps_every_call():
    report = gradscope.analyze(SharedResidual().double(), batch=8)
    assert [layer.name for layer in report.layers] == ["layer", "layer", "layer", "out"]


# --- no false alarms on ordinary code ------------------------------------------------------------


class CumulativeFeatures(nn.Module):
    """A cumulative sum over the features (dim=-1), not over time."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.c(torch.cumsum(torch.softmax(self.b(torch.relu(self.a(x))), -1), -1))


class PerStepMLP(nn.Module):
    """An MLP (with activation modules) applied to each step in a loop, the results stacked."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2)
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([self.mlp(x[:, t]) for t in range(x.shape[1])], dim=1)


class TokenShift(nn.Module):
    """An RWKV-style token shift (each step sees the one before it), between layers."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.a(x))
        h = h + F.pad(h, (0, 0, 1, 0))[:, :-1]
        return self.c(torch.tanh(self.b(h)))


@pytest.mark.parametrize("factory", [CumulativeFeatures, PerStepMLP, TokenShift])
def test_ordinary_sequence_code_raises_no_recurrence(factory):
    torch.manual_seed(0)
    report = gradscope.analyze(factory().double(), input_shape=(2, 12, 8))
    assert not report.coverage.unmeasured_recurrence and report.stack.status == "healthy"
    assert report.stack.blocks == 3  # the per-step MLP is three blocks, not one per step
    if factory is TokenShift:  # each step sees the one before: the loss reaches back 2 steps
        assert report.sequence.effective_horizon == 2
        assert report.sequence.status == "vanishing" and report.status == "vanishing"
    else:  # no step mixes with another: no reach over time to judge
        assert report.sequence is None and not report.fails()


class SmallRawRNN(nn.Module):
    """A recurrence on raw parameters with a single Linear head: too small for a stack."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 8) * 0.3)
        self.head = nn.Linear(8, 1)

    def forward(self, x: Tensor) -> Tensor:
        h, states = x.new_zeros(x.shape[0], 8), []
        for t in range(x.shape[1]):
            h = torch.tanh(x[:, t] + h @ self.w)
            states.append(h)
        return self.head(torch.stack(states, dim=1))


def test_a_small_recurrent_model_is_judged_over_its_sequence_with_its_recurrence_named():
    torch.manual_seed(0)
    report = gradscope.analyze(SmallRawRNN().double(), input_shape=(2, 12, 8))
    assert report.sequence is not None and len(report.sequence.grad_norm_by_lag) == 12
    (unmeasured,) = [f for f in report.findings if f.severity == "error" and f.id == "not-measured"]
    assert "loops over time steps" in unmeasured.message and "--cell" in unmeasured.message
    assert report.fails()


class Seq2SeqTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        self.transformer = nn.Transformer(16, 2, 2, 2, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, 20)

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
        return self.head(self.transformer(self.embed(src), self.embed(tgt), tgt_mask=mask))


def test_a_whole_nn_transformer_is_opened_into_its_layers():
    torch.manual_seed(0)
    ids = torch.randint(0, 20, (2, 10))
    report = gradscope.analyze(Seq2SeqTransformer().double(), (ids, ids.clone()))
    names = [layer.name for layer in report.layers]
    assert sum(name.startswith("transformer.decoder.layers.") for name in names) == 2
    assert report.stack.residual_blocks >= 2


def test_steps_without_a_time_axis_are_said_to_be_ignored():
    report = gradscope.analyze(nn.Sequential(*[nn.Linear(8, 8) for _ in range(3)]), steps=20)
    assert any("--steps 20 ignored" in note for note in report.model.notes)


# --- review regressions --------------------------------------------------------------------------


def test_a_stepped_cell_is_no_stack_over_depth():
    from tests.helpers.models import StateLoop, TanhCell

    torch.manual_seed(0)
    model = StateLoop(TanhCell(3, 6), 6).double()
    named = gradscope.analyze(model, steps=20, cells=("cell",))
    detected = gradscope.analyze(model, input_shape=(1, 20, 3))
    for report in (named, detected):
        assert [core.name for core in report.recurrent] == ["cell"]
        assert report.stack is None and report.layers == []


def test_several_inputs_of_one_shape_take_the_one_the_recurrence_reads():
    class ReadsSecond(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(3, 4, batch_first=True)

        def forward(self, mask: Tensor, x: Tensor) -> Tensor:
            return self.gru(x)[0] * (1 + mask[..., :1])

    report = gradscope.analyze(ReadsSecond(), input_shape=["2,6,3", "2,6,3"], probe="zeros")
    assert any("the main input is 1" in note for note in report.model.notes)


def test_a_namedtuple_of_inputs_is_passed_as_it_came():
    from collections import namedtuple

    Batch = namedtuple("Batch", ["x", "scale"])

    class TakesBatch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(3, 4, batch_first=True)

        def forward(self, batch: Batch) -> Tensor:
            return self.gru(batch.x)[0] * batch.scale

    batch = Batch(torch.randn(2, 6, 3), torch.ones(2, 6, 4))
    report = gradscope.analyze(TakesBatch(), batch)
    assert report.recurrent[0].steps == 6


def test_shapes_given_as_numpy_integers_are_shapes():
    import numpy as np

    report = gradscope.analyze(
        nn.Sequential(*[nn.Linear(8, 8) for _ in range(3)]), input_shape=np.array([4, 8])
    )
    assert report.settings.input_shape == [4, 8]
    with pytest.raises(GradscopeError, match="is not a shape"):
        gradscope.analyze(nn.Linear(8, 8), input_shape=5)
