"""The Python API on whole models: probes, outputs, dtypes, non-finite numbers, no side effects."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradscope
from gradscope import GradientHealthError, GradscopeError
from gradscope.recurrent.unroll import unrolled

from tests.helpers.models import (
    MODULES,
    CellLoop,
    Classifier,
    build,
    orthogonal,
    rnn_with_recurrence,
)

ORIGINAL_LSTM_FORWARD = nn.LSTM.forward


class TokenTagger(nn.Module):
    """Embedding -> LSTM -> per-step logits: a model fed integer token ids."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.lstm = nn.LSTM(8, 6, batch_first=True)
        self.out = nn.Linear(6, 50)

    def forward(self, tokens):
        return self.out(self.lstm(self.embed(tokens))[0])


def test_a_model_object_is_copied_and_left_untouched():
    torch.manual_seed(0)
    model = Classifier(nn.GRU(4, 6, batch_first=True))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gradscope.analyze(model, steps=10)
    assert all(v.dtype == torch.float32 for v in model.state_dict().values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert "forward" not in vars(model.encoder)  # the unroll is gone after the analysis


def test_classifier_output_without_a_time_axis_is_projected_whole():
    model = build(lambda: Classifier(nn.LSTM(4, 6, num_layers=2, batch_first=True)))
    report = gradscope.analyze(model, steps=15, batch=2)
    assert [c.label for c in report.recurrent] == ["encoder[l0]", "encoder[l1]"]
    assert report.settings.input_shape == [2, 15, 4]
    assert len(report.input_grad_norm) == 15
    assert all(c.grad_norm[-1] > 0 for c in report.recurrent)


def test_float32_measures_what_float64_measures():
    model = build(MODULES["lstm_proj_bidir_2layer_bf"])
    double = gradscope.analyze(model, steps=30, dtype="float64")
    single = gradscope.analyze(model, steps=30, dtype="float32")
    assert single.settings.dtype == "float32"
    for a, b in zip(single.recurrent, double.recurrent, strict=True):
        assert a.lyapunov == pytest.approx(b.lyapunov, rel=1e-3, abs=1e-4)
        assert a.grad_norm == pytest.approx(b.grad_norm, rel=1e-3, abs=1e-7)


def test_integer_token_probe_from_a_file(tmp_path):
    torch.manual_seed(0)
    tokens = torch.randint(0, 50, (3, 20))
    path = tmp_path / "tokens.pt"
    torch.save(tokens, path)
    report = gradscope.analyze(TokenTagger(), probe=str(path))
    (core,) = report.recurrent
    assert core.steps == 20 and report.settings.batch == 3
    assert len(report.input_grad_norm) == 20  # at the embedding: ids have no gradient
    assert core.grad_norm[-1] > 0 and core.grad_norm[0] > 0


@pytest.mark.parametrize("name", ["gru", "rnn_tanh", "lstm"])
def test_nan_weights_give_a_nonfinite_verdict_not_a_crash(name):
    model = build(MODULES[name])
    with torch.no_grad():
        model.weight_hh_l0[0, 0] = math.nan
    report = gradscope.analyze(model, steps=10)
    assert report.status == "nonfinite"
    # the weight is named first, then where the forward first reads it
    assert [f.id for f in report.findings[:2]] == ["nonfinite-weights", "nonfinite-values"]
    assert report.findings[0].where["modules"] == ["weight_hh_l0"]
    assert report.numerics.forward.cause == "nonfinite-weight"
    assert report.to_dict()["recurrent"][0]["lyapunov"] == [None]


def test_exploding_relu_rnn_is_exploding():
    rnn = rnn_with_recurrence(1.5 * torch.eye(4, dtype=torch.float64), nonlinearity="relu")
    with torch.no_grad():
        rnn.bias_ih_l0.fill_(1.0)  # every unit stays active: J = 1.5 I at every step
    report = gradscope.analyze(rnn, steps=40, probe="zeros", exponents=4)
    (core,) = report.recurrent
    assert report.status == "exploding"
    assert core.lyapunov == pytest.approx([math.log(1.5)] * 4, abs=1e-9)
    assert "clip-grad-norm" in {f.id for f in report.fixes}
    # measured on a copy: sigma_max(W_hh) = 1 makes J = I (no growth, no decay) and comes
    # first; a seeded orthogonal W_hh keeps a long horizon and comes next
    assert [f.id for f in report.fixes[:2]] == ["spectral-norm", "orthogonal-init"]
    assert all(f.status_after == "healthy" for f in report.fixes[:2])


def test_a_long_memory_lstm_is_healthy_and_assert_healthy_passes():
    model = build(MODULES["lstm"])
    with torch.no_grad():
        model.weight_hh_l0.mul_(0.1)
        model.bias_ih_l0[6:12].fill_(8.0)  # forget gate ~ 0.9997: horizon of thousands of steps
    report = gradscope.analyze(model, steps=50)
    assert report.status == "healthy"
    report.assert_healthy()
    assert report.recurrent[0].gates.mean > 0.99


def test_assert_healthy_on_a_vanishing_model_says_why():
    report = gradscope.analyze(rnn_with_recurrence(0.5 * orthogonal(3)), steps=50)
    with pytest.raises(GradientHealthError, match="vanishing"):
        report.assert_healthy()


def test_cell_loop_reports_one_core_of_kind_cell():
    report = gradscope.analyze(CellLoop(build(lambda: nn.LSTMCell(4, 5))), steps=12)
    (core,) = report.recurrent
    assert core.is_cell and core.cell == "lstm" and core.state_size == 10
    assert report.settings.input_shape == [1, 12, 4]


def test_progress_reports_what_is_happening():
    messages = []
    gradscope.analyze(build(MODULES["rnn_tanh"]), steps=5, progress=messages.append)
    assert messages and all(isinstance(m, str) for m in messages)


def test_progress_names_each_core_and_the_steps_whose_spectra_are_taken():
    messages = []
    model = build(lambda: nn.LSTM(3, 100, num_layers=2))  # states of 200: matrix-free
    gradscope.analyze(model, steps=6, what_if=False, progress=messages.append)
    assert "(model)[l0]: Lyapunov exponents over 6 steps" in messages
    assert "(model)[l1]: spectra of Jacobians 1-6 of 6, matrix-free" in messages


def test_spectrum_steps_sets_how_many_jacobians_get_a_spectrum():
    model = build(MODULES["lstm"])
    assert gradscope.analyze(model, steps=40, spectrum_steps=5).recurrent[0].jacobian.samples == 5
    assert gradscope.analyze(model, steps=40).recurrent[0].jacobian.samples == 40
    big = build(lambda: nn.LSTM(4, 200))  # state of 400: every step still, matrix-free
    jacobian = gradscope.analyze(big, steps=40, what_if=False).recurrent[0].jacobian
    assert (jacobian.samples, jacobian.method) == (40, "krylov")


def test_a_model_without_recurrent_modules_is_refused():
    with pytest.raises(GradscopeError, match="no recurrent module"):
        gradscope.analyze(nn.Sequential(nn.Linear(3, 3)), input_shape=(1, 5, 3))


class FixedLength(nn.Module):
    """A model that only runs on sequences of exactly 7 steps."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 4, batch_first=True)

    def forward(self, x):
        return self.lstm(x.reshape(1, 7, 3))[0]


def test_a_forward_that_fails_on_the_probe_names_the_model_error():
    with pytest.raises(GradscopeError, match=r"forward failed.*RuntimeError: shape.*--input-shape"):
        gradscope.analyze(FixedLength(), steps=5)


class TwoInputs(nn.Module):
    """A decoder that needs its targets too: forward(src, tgt)."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(3, 4, batch_first=True)

    def forward(self, src, tgt):
        return self.gru(src)[0] + tgt


def test_a_forward_that_needs_more_inputs_says_how_to_give_them_all():
    with pytest.raises(GradscopeError, match=r"missing 1 required.*'tgt'.*tuple or dict"):
        gradscope.analyze(TwoInputs(), steps=5)


def test_several_inputs_are_given_as_a_tuple_or_as_several_shapes():
    src = torch.randn(2, 5, 3, dtype=torch.float64)
    tgt = torch.randn(2, 5, 4, dtype=torch.float64)
    model = TwoInputs()

    as_tuple = gradscope.analyze(model, (src, tgt))
    as_shapes = gradscope.analyze(model, input_shape=["2,5,3", "tgt=2,5,4"])

    for report in (as_tuple, as_shapes):
        assert report.settings.input_shape == [2, 5, 3]  # the GRU reads src: the main input
        (core,) = report.recurrent
        assert core.steps == 5
    assert as_tuple.settings.inputs == {"0": [2, 5, 3], "1": [2, 5, 4]}
    assert as_shapes.settings.inputs == {"0": [2, 5, 3], "tgt": [2, 5, 4]}


def test_an_embedding_first_model_gets_token_ids_in_its_vocabulary():
    report = gradscope.analyze(TokenTagger(), steps=12, batch=3)
    assert report.settings.input_shape == [3, 12]
    (core,) = report.recurrent
    assert core.steps == 12 and all(g > 0 for g in core.grad_norm)
    assert any("embed" in note for note in report.model.notes)


def test_token_models_report_the_gradient_at_the_embedding_output():
    torch.manual_seed(0)
    model = TokenTagger().double()
    report = gradscope.analyze(model, steps=12, batch=3, seed=5)

    tokens = torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(5))
    embedded = model.embed(tokens)
    embedded.retain_grad()
    last = model.out(model.lstm(embedded)[0])[:, -1]
    w = torch.randn(50, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    (last @ (w / w.norm())).sum().backward()
    expected = embedded.grad.pow(2).sum(-1).mean(0).sqrt()  # sqrt(mean_b ||g_bt||^2)

    assert report.input_grad_norm == pytest.approx(expected.tolist(), rel=1e-10)


class Seq2Seq(nn.Module):
    """An LSTM encoder whose final state starts a 10-step LSTMCell decoder."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.LSTM(4, 6, batch_first=True)
        self.decoder = nn.LSTMCell(4, 6)
        self.out = nn.Linear(6, 4)

    def forward(self, x):
        _, (h, c) = self.encoder(x)
        h, c, y = h[0], c[0], x[:, -1]
        outputs = []
        for _ in range(10):
            h, c = self.decoder(y, (h, c))
            y = self.out(h)
            outputs.append(y)
        return torch.stack(outputs, dim=1)


def test_a_decoder_is_judged_over_the_steps_it_ran_and_fed_by_the_encoder():
    report = gradscope.analyze(build(Seq2Seq), steps=60, exponents=2)
    encoder, decoder = report.recurrent
    assert (encoder.steps, encoder.distance) == (60, 60)
    assert (decoder.steps, decoder.distance) == (10, 10)
    assert encoder.grad_norm[-1] > 0  # the loss reaches the encoder through the decoder
    explicit = gradscope.analyze(build(Seq2Seq), steps=60, horizon=200, exponents=2)
    assert [c.distance for c in explicit.recurrent] == [200, 10]  # the decoder runs 10


class TransposeIn(nn.Module):
    """Takes (batch, steps, F) and feeds a time-major LSTM: the layout the LSTM alone hides."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 6)

    def forward(self, x):
        return self.lstm(x.transpose(0, 1))[0].transpose(0, 1)


class TimeMajorCell(nn.Module):
    """A GRUCell looped over axis 0 of a (steps, batch, F) input."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.GRUCell(4, 6)

    def forward(self, x):
        h, outputs = None, []
        for t in range(x.shape[0]):
            h = self.cell(x[t], h)
            outputs.append(h)
        return torch.stack(outputs)


@pytest.mark.parametrize(
    ("factory", "flag"), [(TransposeIn, "--batch-first"), (TimeMajorCell, "--time-major")]
)
def test_a_probe_read_on_the_wrong_axis_is_refused_and_the_flag_fixes_it(factory, flag):
    with pytest.raises(GradscopeError, match=f"other axis; rerun with {flag}"):
        gradscope.analyze(build(factory), steps=30, batch=2)
    report = gradscope.analyze(
        build(factory), steps=30, batch=2, batch_first=flag == "--batch-first"
    )
    (core,) = report.recurrent
    assert (core.steps, core.distance) == (30, 30)
    assert report.settings.input_shape == ([2, 30, 4] if flag == "--batch-first" else [30, 2, 4])


class ScaledLSTM(nn.LSTM):
    """A subclass whose own forward calls PyTorch's."""

    def forward(self, x, hx=None):
        output, state = super().forward(x, hx)
        return output * 3.0, state


def test_subclasses_with_their_own_forward_keep_it_and_are_unrolled():
    model = build(lambda: ScaledLSTM(4, 5))
    x = torch.randn(7, 2, 4, dtype=torch.float64)
    expected = model(x)[0]
    with unrolled(model) as recorder:
        actual = model(x)[0]
    torch.testing.assert_close(actual, expected, atol=1e-12, rtol=1e-12)
    assert [trace.steps for trace in recorder.traces.values()] == [7]
    assert nn.LSTM.forward is ORIGINAL_LSTM_FORWARD  # restored after the context


class TwoBatches(nn.Module):
    """One encoder applied to two inputs of different batch sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.GRU(4, 6, batch_first=True)

    def forward(self, x):
        query = self.encoder(x)[0][:, -1]
        document = self.encoder(torch.cat([x, x]))[0][:, -1]
        return query * document[: len(query)]


def test_a_module_called_on_two_batch_sizes_is_measured_on_the_first():
    report = gradscope.analyze(build(TwoBatches), steps=12, batch=2)
    (core,) = report.recurrent
    assert core.steps == 24 and len(core.grad_norm) == 24
    assert core.jacobian.samples == 2 * 12  # the trajectory of the first call only


class FixedDtype(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(4, 6, batch_first=True)

    def forward(self, x):
        h0 = torch.zeros(1, x.shape[0], 6)  # float32, whatever the model's dtype
        return self.rnn(x, h0)[0]


def test_a_model_that_fixes_its_dtype_is_told_to_use_float32():
    with pytest.raises(GradscopeError, match="--dtype float32"):
        gradscope.analyze(FixedDtype(), steps=5)
    assert gradscope.analyze(FixedDtype(), steps=5, dtype="float32").recurrent[0].steps == 5


class PredictionsFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(4, 6, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        logits = self.head(self.rnn(x)[0])
        return {"mask": torch.ones(x.shape[:2]), "ids": logits.argmax(-1), "logits": logits}


def test_the_loss_uses_the_first_output_tensor_that_carries_a_gradient():
    report = gradscope.analyze(build(PredictionsFirst), steps=8)
    assert report.recurrent[0].grad_norm[-1] > 0


def test_a_probe_file_and_an_input_shape_together_are_refused(tmp_path):
    path = tmp_path / "probe.pt"
    torch.save(torch.randn(1, 5, 6), path)
    with pytest.raises(GradscopeError, match="drop --input-shape"):
        gradscope.analyze(build(MODULES["rnn_tanh"]), probe=str(path), input_shape="1,5,6")


def test_a_tensor_probe_measures_what_the_same_probe_file_measures(tmp_path):
    torch.manual_seed(3)
    x = torch.randn(7, 2, 4, dtype=torch.float64)  # (steps, batch, features): time-major RNN
    path = tmp_path / "probe.pt"
    torch.save(x, path)
    model = build(MODULES["gru"])
    from_file = gradscope.analyze(model, probe=str(path), exponents=2)
    from_tensor = gradscope.analyze(model, probe=x, exponents=2)
    as_example = gradscope.analyze(model, x, exponents=2)
    assert from_tensor.settings.probe == "tensor" and from_file.settings.probe == str(path)
    for report in (from_tensor, as_example):
        assert report.settings.steps == 7 and report.settings.batch == 2
        (core,) = report.recurrent
        assert core.lyapunov == from_file.recurrent[0].lyapunov
        assert core.grad_norm == from_file.recurrent[0].grad_norm


def test_a_numpy_probe_and_integer_token_tensors_are_taken_as_given():
    x = torch.randn(5, 1, 4, dtype=torch.float64)
    from_numpy = gradscope.analyze(build(MODULES["rnn_tanh"]), x.numpy(), exponents=1)
    assert from_numpy.settings.steps == 5
    tokens = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(0))
    report = gradscope.analyze(TokenTagger(), tokens)
    assert report.recurrent[0].steps == 9 and report.settings.batch == 2


def test_an_example_input_and_a_probe_together_are_refused():
    x = torch.randn(5, 1, 4, dtype=torch.float64)
    with pytest.raises(GradscopeError, match="not both"):
        gradscope.analyze(build(MODULES["rnn_tanh"]), x, probe="zeros")


def test_a_probe_that_is_no_tensor_is_refused_in_one_line():
    with pytest.raises(GradscopeError, match="not a tensor") as raised:
        gradscope.analyze(build(MODULES["rnn_tanh"]), probe=object())
    assert "\n" not in str(raised.value)


def test_plain_values_are_taken_in_the_form_a_user_has_them():
    model = build(MODULES["rnn_tanh"])
    report = gradscope.analyze(
        model, input_shape=[1, 12, 4], cells=(), spectrum_steps="3", allow_globals="a.b:C"
    )
    assert report.settings.input_shape == [1, 12, 4]
    assert report.settings.spectrum_steps == 3
    with pytest.raises(GradscopeError, match="--nonlinearity must be tanh or relu"):
        gradscope.analyze(model, nonlinearity="sigmoid")
