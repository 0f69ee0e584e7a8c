"""Where a NaN or Inf first appears, checked against faults planted in known places and
against twins that find them with module hooks; the headroom figures against values computed
directly; every fault an exit 1 with a finding."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import gradscope
from gradscope.cli import main
from gradscope.origin import nonfinite_weights, op_name, trace_numerics
from gradscope.precision import LIMITS, first_lag_below, headroom
from gradscope.probe.inputs import Probe
from gradscope.report import ORIGIN_CAUSES, Peak

from tests.helpers import faults

WIDTH = 16


def probe(x: torch.Tensor, time_axis: int | None = None) -> Probe:
    return Probe(
        x.clone().requires_grad_(True), time_axis, 1 if time_axis == 0 else 0, "gaussian", 0
    )


def gaussian(*shape: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=dtype)


def analysed(model: nn.Module, **options) -> gradscope.Report:
    options.setdefault("input_shape", (8, WIDTH))
    return gradscope.analyze(model, what_if=False, **options)


def finding(report: gradscope.Report, finding_id: str):
    return next(f for f in report.findings if f.id == finding_id)


# --- the limits and the headroom --------------------------------------------------------------


@pytest.mark.parametrize("name", ["float16", "bfloat16", "float32", "float64"])
def test_the_limits_are_torchs(name):
    info = torch.finfo(getattr(torch, name))
    limits = LIMITS[name]
    assert limits.max == info.max
    assert limits.smallest_normal == info.smallest_normal
    assert limits.smallest_subnormal == info.smallest_normal * info.eps


def test_headroom_against_values_computed_directly():
    norms = [1.0 * 0.5**k for k in range(60)]
    rows = headroom(Peak(1234.0, "a", "linear"), Peak(8.0, "b", "linear"), {"core": norms})
    by_dtype = {row.dtype: row for row in rows}
    half = by_dtype["float16"]
    assert half.activation_decades == pytest.approx(math.log10(65504 / 1234))
    assert half.gradient_decades == pytest.approx(math.log10(65504 / 8))
    # the first lag whose norm is below float16's smallest normal, counted directly
    tiny = torch.finfo(torch.float16).smallest_normal
    expected = next(k for k, v in enumerate(norms) if v < tiny)
    assert [(u.part, u.lag) for u in half.underflow] == [("core", expected)]
    subnormal = tiny * torch.finfo(torch.float16).eps
    assert half.underflow[0].zero_lag == next(k for k, v in enumerate(norms) if v < subnormal)
    assert by_dtype["bfloat16"].underflow == []  # 2^-59 is far above bfloat16's 1.2e-38
    assert first_lag_below([0.0, 1e-9], 1e-5) == 1  # an exact 0 never reached that step


def test_the_largest_values_match_hooks_and_autograd_on_the_real_model():
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Linear(WIDTH, 32), nn.Tanh(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)
    ).double()
    x = gaussian(8, WIDTH)
    trace = trace_numerics(model, probe(x))
    outputs = []
    handles = [m.register_forward_hook(lambda m, i, o: outputs.append(o)) for m in model]
    leaf = x.clone().requires_grad_(True)
    y = model(leaf)
    for handle in handles:
        handle.remove()
    assert trace.largest_activation.value == pytest.approx(
        max(float(o.detach().abs().max()) for o in outputs)
    )
    # every gradient autograd computes: the weights', the input's and each block's output's
    from gradscope.probe import projection_loss

    loss = projection_loss(y, probe(x))
    grads = torch.autograd.grad(loss, [*model.parameters(), leaf, *outputs[:-1]])
    assert trace.largest_gradient.value == pytest.approx(max(float(g.abs().max()) for g in grads))
    assert trace.forward is None and trace.backward is None and trace.output_finite


# --- faults planted in known places -----------------------------------------------------------


def test_an_inf_weight_in_layer_3_of_6_is_named_before_anything_and_is_the_origin():
    model = faults.mlp_with_inf_weight(layer=3, layers=6).double()
    assert [(f.name, f.nan, f.inf, f.numel) for f in nonfinite_weights(model)] == [
        ("2.0.weight", 0, 1, WIDTH * WIDTH)
    ]
    report = analysed(model)
    assert report.status == "nonfinite"
    weights = finding(report, "nonfinite-weights")
    assert weights.where["modules"] == ["2.0.weight"] and "1 Inf of 256" in weights.message
    x = gaussian(8, WIDTH)
    forward, backward = report.numerics.forward, report.numerics.backward
    assert forward.module == faults.first_nonfinite_output(model, x) == "2.0"
    assert (forward.cause, forward.op, forward.module_type) == (
        "nonfinite-weight",
        "linear",
        "Linear",
    )
    assert "2.0.weight" in forward.detail
    w = torch.randn(WIDTH, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert backward.module == faults.first_nonfinite_gradient(model, x, w)
    assert backward.cause == "follows-forward"
    assert report.findings[0].id == "nonfinite-weights"  # the root first
    assert {"restore-weights", "lower-learning-rate"} <= {fix.id for fix in report.fixes}
    # an Inf Jacobian trace shows no skip: no block of this plain MLP reads as residual
    assert not any(layer.residual for layer in report.layers)


def test_a_log_of_a_negative_activation_is_found_in_its_block_with_its_line():
    model = faults.mlp_with_log().double()
    x = gaussian(8, WIDTH)
    assert bool(torch.isnan(model(x)).any())  # the fault is real: the output holds NaN
    report = analysed(model)
    origin = report.numerics.forward
    assert origin.module == faults.first_nonfinite_output(model, x) == "2"
    assert (origin.module_type, origin.op, origin.cause) == (
        "LogBlock",
        "log",
        "log-of-non-positive",
    )
    assert origin.source.startswith("faults.py:") and "torch.log(self.linear(x))" in origin.source
    with torch.no_grad():
        low = float(model[2].linear(model[1](model[0](x))).min())
    assert f"{low:.3g}" in origin.detail
    assert report.status == "nonfinite"  # never healthy over a NaN output
    found = finding(report, "nonfinite-values")
    assert found.where["module"] == "2" and found.where["view"] == "forward"
    assert found.fixes[:2] == ["stable-formulation", "add-epsilon"]
    fix = next(f for f in report.fixes if f.id == "stable-formulation")
    assert "log in 2 (LogBlock)" in fix.snippet and "clamp_min" in fix.snippet


def test_a_division_by_a_zero_variance_normalisation():
    model = faults.mlp_with_hand_norm().double()
    x = gaussian(8, WIDTH)
    report = analysed(model)
    origin = report.numerics.forward
    assert origin.module == faults.first_nonfinite_output(model, x) == "3"
    assert (origin.module_type, origin.op, origin.cause) == ("HandNorm", "div", "division-by-zero")
    assert "8 of 8" in origin.detail  # every row of the divisor is 0
    w = torch.randn(4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert report.numerics.backward.module == faults.first_nonfinite_gradient(model, x, w)
    assert finding(report, "nonfinite-values").fixes == ["add-epsilon"]


def test_an_infinite_derivative_is_a_backward_origin_of_its_own():
    model = faults.mlp_with_norm_of_zero().double()
    x = gaussian(8, WIDTH)
    assert bool(torch.isfinite(model(x)).all())  # the forward is finite
    report = analysed(model)
    numerics = report.numerics
    assert numerics.forward is None and numerics.output_finite
    w = torch.randn(4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert numerics.backward.module == faults.first_nonfinite_gradient(model, x, w) == "3"
    assert (numerics.backward.op, numerics.backward.cause) == ("sqrt", "infinite-derivative")
    assert report.status == "nonfinite"
    assert finding(report, "nonfinite-values").where["view"] == "backward"


def test_a_recurrent_state_that_overflows_float16_is_found_at_its_step():
    steps = 100
    rnn = faults.growing_rnn()
    expected = faults.first_overflow_step(rnn, steps, torch.float16)
    assert expected is not None and 35 <= expected <= 45  # the fault is planted near step 40
    assert faults.first_overflow_step(rnn, steps, torch.float32) is None
    report = gradscope.analyze(rnn, steps=steps, dtype="float16", what_if=False)
    origin = report.numerics.forward
    assert (origin.module, origin.module_type, origin.step) == ("", "RNN", expected)
    assert origin.cause == "overflow" and "float16" in origin.detail
    assert report.status == "nonfinite" and report.settings.dtype == "float16"
    found = finding(report, "nonfinite-values")
    assert found.where["step"] == expected and found.fixes[0] == "use-bfloat16"
    # in bfloat16, float32's range: the same state stays finite
    assert (
        gradscope.analyze(rnn, steps=steps, dtype="bfloat16", what_if=False).numerics.forward
        is None
    )


def test_a_cell_called_once_per_step_names_the_step_by_its_call():
    class Loop(nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = nn.RNNCell(4, 8, nonlinearity="relu")
            self.cell.load_state_dict(
                {k.removesuffix("_l0"): v for k, v in faults.growing_rnn().state_dict().items()}
            )

        def forward(self, x):
            h = torch.zeros(x.shape[1], 8, dtype=x.dtype)
            for t in range(x.shape[0]):
                h = self.cell(x[t], h)
            return h

    model = Loop().half()
    trace = trace_numerics(model, probe(torch.zeros(60, 1, 4, dtype=torch.float16), time_axis=0))
    expected = faults.first_overflow_step(faults.growing_rnn(), 60, torch.float16)
    assert trace.forward.module == "cell" and trace.forward.step == expected


class Masked(nn.Module):
    """Attention-like scores with all but four features masked: by ``masked_fill`` with
    -inf (``fill``), or by adding ``finfo.min``, as Hugging Face models do."""

    def __init__(self, fill: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(WIDTH, WIDTH)
        self.fill = fill

    def forward(self, x):
        scores, masked = self.linear(x), torch.arange(WIDTH) > 3
        if self.fill:
            return torch.softmax(scores.masked_fill(masked, -math.inf), -1)
        return torch.softmax(scores + masked.to(x.dtype) * torch.finfo(x.dtype).min, -1)


def test_a_minus_inf_mask_that_softmax_absorbs_is_no_origin():
    trace = trace_numerics(Masked(fill=True).double(), probe(gaussian(8, WIDTH)))
    assert trace.output_finite and trace.forward is None and trace.backward is None


def test_a_finfo_min_mask_is_no_activation_and_a_scripted_model_is_said_unseen():
    model = Masked(fill=False).double()
    x = gaussian(8, WIDTH)
    trace = trace_numerics(model, probe(x))
    with torch.no_grad():
        scores = model.linear(x)
    # the largest activation is the scores', not the mask's -1.8e308
    assert trace.largest_activation.value == pytest.approx(float(scores.abs().max()))
    scripted = torch.jit.script(faults.mlp_with_log().double())
    trace = trace_numerics(scripted, probe(x))
    assert not trace.output_finite and trace.forward.cause == "unseen"


def test_an_in_place_log_is_its_own_origin_not_a_read_of_nan():
    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(WIDTH, WIDTH)

        def forward(self, x):
            return self.linear(x).log_()

    trace = trace_numerics(InPlace().double(), probe(gaussian(8, WIDTH)))
    origin = trace.forward
    assert (origin.module, origin.op, origin.cause) == ("", "log", "log-of-non-positive")
    assert "in place" in origin.detail


def test_checkpoint_weights_and_buffers_that_hold_nan_are_each_named(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 4))
    with torch.no_grad():
        model[0].bias[:2] = math.nan
        model[2].weight[1, :] = math.inf
    model[1].running_var[0] = math.nan
    found = {f.name: (f.nan, f.inf) for f in nonfinite_weights(model)}
    assert found == {"0.bias": (2, 0), "2.weight": (0, 4), "1.running_var": (1, 0)}


def test_a_state_dict_names_its_nonfinite_tensors_even_those_no_part_uses(tmp_path, capsys):
    torch.manual_seed(0)
    lstm, head = nn.LSTM(4, 8), nn.Linear(8, 2)
    with torch.no_grad():
        lstm.weight_hh_l0[0, :3] = math.nan
        head.weight[0, 0] = -math.inf
    state = {**{f"rnn.{k}": v for k, v in lstm.state_dict().items()}}
    state |= {f"fc.{k}": v for k, v in head.state_dict().items()}
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    code = main(["analyze", str(path), "--steps", "10", "--format", "json", "--no-what-if"])
    data = json.loads(capsys.readouterr().out)
    assert code == 1 and data["status"] == "nonfinite"
    weights = {w["name"]: (w["nan"], w["inf"]) for w in data["numerics"]["nonfinite_weights"]}
    assert weights == {"rnn.weight_hh_l0": (3, 0), "fc.weight": (0, 1)}
    assert data["findings"][0]["id"] == "nonfinite-weights"


def test_a_state_dict_in_float16_is_traced_part_by_part_and_says_so(tmp_path, capsys):
    torch.manual_seed(0)
    path = tmp_path / "weights.pt"
    torch.save(nn.LSTM(4, 8, num_layers=2).state_dict(), path)
    args = ["analyze", str(path), "--steps", "30", "--format", "json", "--no-what-if"]
    main([*args, "--dtype", "float16"])
    data = json.loads(capsys.readouterr().out)
    assert data["numerics"]["dtype"] == "float16" and data["numerics"]["traced"]
    assert any("--dtype float16: the traced" in note for note in data["model"]["notes"])
    assert data["numerics"]["largest_activation"]["op"] == "lstm"


def test_the_causes_are_the_ones_the_report_names():
    assert op_name(torch.log) == "log" and op_name(torch.Tensor.__truediv__) == "div"
    assert op_name(torch.Tensor.log_) == "log" and op_name(torch.Tensor.__rtruediv__) == "rdiv"
    assert {"log-of-non-positive", "division-by-zero", "overflow", "unseen"} <= set(ORIGIN_CAUSES)


# --- on the command line: exit 1 with a finding, never a traceback -----------------------------


@pytest.mark.parametrize(
    ("build", "args", "cause"),
    [
        (lambda: faults.mlp_with_inf_weight(), ["--input-shape", "8,16"], "nonfinite-weight"),
        (faults.mlp_with_log, ["--input-shape", "8,16"], "log-of-non-positive"),
        (faults.mlp_with_hand_norm, ["--input-shape", "8,16"], "division-by-zero"),
        (faults.mlp_with_norm_of_zero, ["--input-shape", "8,16"], "infinite-derivative"),
        (faults.growing_rnn, ["--dtype", "float16", "--steps", "60"], "overflow"),
    ],
)
def test_every_fault_exits_1_with_a_finding(tmp_path, capsys, build, args, cause):
    path = tmp_path / "model.pt"
    torch.save(build(), path)
    code = main(["analyze", str(path), "--trust", "--format", "json", "--no-what-if", *args])
    captured = capsys.readouterr()
    assert code == 1, captured.err
    assert "Traceback" not in captured.err
    data = json.loads(captured.out)
    assert data["status"] == "nonfinite"
    numerics = data["numerics"]
    origin = numerics["forward"] or numerics["backward"]
    assert origin["cause"] == cause
    assert any(f["id"] == "nonfinite-values" for f in data["findings"])
    code = main(["analyze", str(path), "--trust", "--no-what-if", *args])
    text = capsys.readouterr()
    assert code == 1 and "Traceback" not in text.err and "first holds" in text.out


def test_a_healthy_model_reports_its_headroom_in_the_terminal(tmp_path, capsys):
    torch.manual_seed(0)
    path = tmp_path / "gru.pt"
    torch.save(nn.GRU(4, 8), path)
    code = main(["analyze", str(path), "--steps", "40", "--no-what-if"])
    out = capsys.readouterr().out
    assert code in (0, 1)
    assert "Traced in float64: largest activation" in out
    for dtype in ("float16", "bfloat16", "float32"):
        assert dtype in out
    assert "GradScaler" in out


def test_loss_at_all_says_how_a_summed_loss_changes_the_headroom(tmp_path, capsys):
    torch.manual_seed(0)
    path = tmp_path / "gru.pt"
    torch.save(nn.GRU(4, 8), path)
    main(["analyze", str(path), "--steps", "20", "--no-what-if", "--loss-at", "all"])
    out = " ".join(capsys.readouterr().out.split())
    assert "with --loss-at all the loss sums over every step" in out


def test_ci_formats_file_a_nonfinite_origin_under_numerics(tmp_path, capsys):
    path = tmp_path / "model.pt"
    torch.save(faults.mlp_with_log(), path)
    args = ["analyze", str(path), "--trust", "--input-shape", "8,16", "--no-what-if"]
    assert main([*args, "--format", "junit"]) == 1
    xml = capsys.readouterr().out
    case = xml[xml.index('name="numerics"') :]
    assert case.index('<failure type="nonfinite-values"') < case.index("</testcase>")
    assert main([*args, "--format", "github"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("::error") and "log in 2 (LogBlock)" in line for line in lines)


def test_the_underflow_summary_names_the_first_part_and_whether_bfloat16_keeps_it():
    from gradscope.render.numerics import underflow_summary
    from gradscope.report import Numerics

    norms = {"enc[l0]": [0.5**k for k in range(40)], "dec": [0.9**k for k in range(40)]}
    numerics = Numerics("float64", headroom=headroom(None, None, norms))
    tiny = torch.finfo(torch.float16).smallest_normal
    lag = next(k for k in range(40) if 0.5**k < tiny)
    assert underflow_summary(numerics) == (
        f"In float16 the gradient norm of enc[l0] from lag {lag} is below its smallest normal "
        "(6.1e-05): it underflows; bfloat16 keeps it."
    )
    assert underflow_summary(Numerics("float64", headroom=headroom(None, None, {}))) is None
