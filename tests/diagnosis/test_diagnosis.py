"""The verdict rule, findings and fix snippets: pure functions on plain numbers."""

from __future__ import annotations

import math

import pytest

from gradscope.diagnosis.verdict import core_status, with_distances, worst
from gradscope.fixes.code import module_expression
from gradscope.report import Extremes, JacobianSummary, WeightSummary
from gradscope.theory import memory_horizon, suggested_gate_bias

from tests.helpers.samples import core, judge


def test_memory_horizon_is_log_inverse_epsilon_over_the_rate():
    assert memory_horizon(math.log(0.5), 1e-3) == pytest.approx(9.9658, abs=1e-4)
    assert memory_horizon(0.1, 1e-2) == pytest.approx(math.log(100) / 0.1)
    assert memory_horizon(0.0, 1e-3) is None
    assert memory_horizon(math.nan, 1e-3) is None
    assert memory_horizon(-math.inf, 1e-3) == 0.0


@pytest.mark.parametrize(
    ("exponent", "finite", "expected"),
    [
        (math.log(0.5), True, "vanishing"),  # tau 9.97 < 100
        (-0.01, True, "healthy"),  # tau 691 > 100
        (0.1, True, "exploding"),  # tau 69 < 100
        (0.01, True, "healthy"),
        (0.0, True, "healthy"),
        (-math.inf, True, "vanishing"),
        (math.inf, True, "nonfinite"),
        (math.nan, True, "nonfinite"),
        (-0.5, False, "nonfinite"),
    ],
)
def test_core_status_follows_the_design_rule(exponent, finite, expected):
    assert core_status(exponent, finite, distance=100, epsilon=1e-3) == expected


def test_a_horizon_exactly_at_the_distance_is_healthy():
    exponent = -math.log(1000) / 50
    assert core_status(exponent, True, distance=50, epsilon=1e-3) == "healthy"
    assert core_status(exponent, True, distance=51, epsilon=1e-3) == "vanishing"


def test_worst_status_orders_nonfinite_exploding_vanishing_healthy():
    assert worst([]) == "healthy"
    assert worst(["healthy", "vanishing"]) == "vanishing"
    assert worst(["vanishing", "exploding", "healthy"]) == "exploding"
    assert worst(["exploding", "nonfinite"]) == "nonfinite"


def test_suggested_gate_bias_keeps_one_over_epsilon_over_the_horizon():
    bias = suggested_gate_bias(100, 1e-3)
    keep = 1 / (1 + math.exp(-bias))
    assert keep**100 == pytest.approx(1e-3)
    assert bias == pytest.approx(2.638, abs=1e-3)
    assert suggested_gate_bias(5, 1e-3) == 1.0  # never below Jozefowicz et al.'s 1


def test_module_expression_indexes_sequential_children():
    assert module_expression("layers.0.rnn") == "model.layers[0].rnn"
    assert module_expression("encoder", "self") == "self.encoder"
    assert module_expression("") == "model"


def test_vanishing_vanilla_rnn_calls_for_a_gated_cell_that_fits():
    status, cores, _, findings, fixes = judge([core("rnn_tanh", -0.675)], 1e-3)
    assert status == "vanishing" and cores[0].status == "vanishing"
    (finding,) = findings
    assert finding.id == "vanishing-gradient" and finding.kind == "vanishing"
    assert finding.where == {"module": "encoder", "layer": 0, "direction": "forward"}
    assert "10.2 steps" in finding.message and "-0.675" in finding.message
    assert "100-step horizon" in finding.message and "gated cell" in finding.message
    assert [fix.id for fix in fixes] == ["use-lstm", "use-gru"]
    lstm = fixes[0].snippet
    assert "self.encoder = nn.LSTM(64, 128, batch_first=True)" in lstm
    assert "# was: nn.RNN(64, 128, batch_first=True)" in lstm
    assert "self.encoder = nn.GRU(64, 128, batch_first=True)" in fixes[1].snippet
    assert "10.2 steps" in fixes[0].detail


def test_pascanu_bound_is_named_when_it_guarantees_vanishing():
    weights = WeightSummary(spectral_radius=0.5, sigma_max=0.7, pascanu_bound=1.0)
    _, _, _, findings, _ = judge([core("rnn_tanh", -0.7, weights=weights)], 1e-3)
    assert "below Pascanu's bound" in findings[0].message


def test_vanishing_lstm_gets_the_forget_gate_bias_slices():
    lstm = core("lstm", -0.5, hidden_size=128, num_layers=2)
    status, _, _, findings, fixes = judge([lstm], 1e-3)
    assert status == "vanishing"
    assert "forget gate averages 0.50" in findings[0].message
    (fix,) = fixes
    assert fix.id == "forget-gate-bias"
    assert "module = model.encoder\n" in fix.snippet
    assert all(len(line) <= 76 for line in fix.snippet.splitlines())
    assert "bias[128:256].fill_(2.6)" in fix.snippet and "bias[128:256].zero_()" in fix.snippet


def test_vanishing_gru_gets_the_update_gate_bias():
    fixes = judge([core("gru", -0.45, hidden_size=32)], 1e-3)[4]
    assert fixes[0].id == "update-gate-bias"
    assert "bias[32:64].fill_(2.6)" in fixes[0].snippet
    assert "(r, z, n)" in fixes[0].snippet


def test_exploding_core_gets_clipping_and_for_a_vanilla_rnn_a_bounded_gain():
    status, _, _, findings, fixes = judge([core("rnn_tanh", 0.158, num_layers=2)], 1e-3)
    assert status == "exploding"
    assert findings[0].id == "exploding-gradient" and "grow 1000x" in findings[0].message
    assert [fix.id for fix in fixes] == ["clip-grad-norm", "spectral-norm", "orthogonal-init"]
    assert "torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)" in fixes[0].snippet
    assert 'name="weight_hh_l1"' in fixes[1].snippet
    assert "orthogonal_" in fixes[2].snippet


def test_nonfinite_core_is_the_worst_and_named():
    status, _, _, findings, fixes = judge(
        [core("lstm", -0.5), core("gru", math.nan, name="decoder", finite=False)], 1e-3
    )
    assert status == "nonfinite"
    assert findings[0].id == "nonfinite-values" and findings[0].where["module"] == "decoder"
    assert "clip-grad-norm" in [fix.id for fix in fixes]


def test_strongly_non_normal_jacobian_warns_without_failing():
    jacobian = JacobianSummary(Extremes(0.5, 0.5), Extremes(10.02, 10.02), samples=100)
    status, _, _, findings, _ = judge([core("rnn_tanh", -0.001, jacobian=jacobian)], 1e-3)
    assert status == "healthy"
    assert [(f.id, f.severity) for f in findings] == [("transient-growth", "warning")]


def test_healthy_cores_have_no_findings():
    status, _, _, findings, fixes = judge([core("lstm", -0.01)], 1e-3)
    assert (status, findings, fixes) == ("healthy", [], [])


def test_a_core_shorter_than_the_probe_is_judged_over_the_steps_it_ran():
    decoder = core("lstm", -0.4, name="decoder", steps=10)
    encoder = core("lstm", -0.4, name="encoder", steps=100)
    capped = with_distances([encoder, decoder], None, probe_steps=100)
    assert [c.distance for c in capped] == [100, 10]
    assessed = judge(capped, 1e-3)[1]
    assert [c.status for c in assessed] == ["vanishing", "healthy"]  # tau 17.3 vs 100 and 10
    # a horizon beyond the probe extrapolates the encoder's rate; the decoder's length is
    # the model's own, so it is judged over the 10 steps it runs, never over 300
    requested = with_distances([encoder, decoder], 300, probe_steps=100)
    assert [c.distance for c in requested] == [300, 10]
    shorter = with_distances([encoder, decoder], 5, probe_steps=100)
    assert [c.distance for c in shorter] == [5, 5]


def test_gate_bias_suggestion_follows_the_core_horizon():
    fixes = judge(with_distances([core("lstm", -0.5, steps=20)], None, 100), 1e-3)[4]
    assert f"fill_({suggested_gate_bias(20, 1e-3):.1f})" in fixes[0].snippet
    assert "over 20 steps" in fixes[0].snippet


# --- custom cells: no W_hh, no gate, only the step Jacobian ----------------------------------

#: Words that assume a built-in cell's weights or class; none fits a custom cell.
BUILTIN_WORDS = ("W_hh", "weight_hh", "RNNCell", "nn.RNN", "vanilla", "gated cell", "gate avera")


def assert_no_builtin_words(*texts: str) -> None:
    for text in texts:
        assert not [word for word in BUILTIN_WORDS if word in text], text


def test_vanishing_custom_cell_speaks_of_its_step_jacobian_and_gets_a_skip_on_the_state():
    status, _, _, findings, fixes = judge([core("custom", -0.675, name="cell")], 1e-3)
    assert status == "vanishing"
    (finding,) = findings
    assert finding.id == "vanishing-gradient" and finding.fixes == ["residual-connections"]
    assert finding.message.startswith("cell (custom): gradients shrink 1000x every 10.2 steps")
    assert "step Jacobian ds_t/ds_{t-1}" in finding.message
    assert "128-entry state" in finding.message and "spectral radius 0.52" in finding.message
    (fix,) = fixes
    assert fix.id == "residual-connections" and "10.2 steps" in fix.detail
    assert "model.cell = ResidualCell(model.cell)" in fix.snippet
    assert "return state + update" in fix.snippet
    assert all(len(line) <= 76 for line in fix.snippet.splitlines())
    assert_no_builtin_words(finding.message, fix.title, fix.detail, fix.snippet)


def test_the_skip_snippet_wraps_each_custom_cell_by_its_module_path_once():
    cells = [
        core("custom", -0.5, name="layers.0.cell"),
        core("custom", -0.6, name="decoder.cell"),
        core("custom", -0.7, name="layers.0.cell", layer=0, direction="reverse"),
    ]
    (fix,) = judge(cells, 1e-3)[4]
    wraps = [line for line in fix.snippet.splitlines() if "= ResidualCell(" in line]
    assert wraps == [
        "model.layers[0].cell = ResidualCell(model.layers[0].cell)",
        "model.decoder.cell = ResidualCell(model.decoder.cell)",
    ]
    assert fix.snippet.count("class ResidualCell") == 1


def test_a_vanilla_rnn_beside_a_custom_cell_keeps_its_gated_cell_fixes():
    alone_findings, alone_fixes = judge([core("rnn_tanh", -0.675)], 1e-3)[3:]
    cores = [core("rnn_tanh", -0.675), core("custom", -0.5, name="cell")]
    findings, fixes = judge(cores, 1e-3)[3:]
    assert [f.fixes for f in findings] == [["use-lstm", "use-gru"], ["residual-connections"]]
    assert findings[0] == alone_findings[0]
    assert [fix.id for fix in fixes] == ["use-lstm", "use-gru", "residual-connections"]
    assert fixes[:2] == alone_fixes  # the custom cell is in neither replacement
    assert "model.encoder" not in fixes[2].snippet


def test_exploding_custom_cell_gets_clipping_only():
    status, _, _, findings, fixes = judge([core("custom", 0.158, name="cell")], 1e-3)
    assert status == "exploding"
    assert findings[0].id == "exploding-gradient" and findings[0].fixes == ["clip-grad-norm"]
    assert [fix.id for fix in fixes] == ["clip-grad-norm"]
    assert_no_builtin_words(findings[0].message, *(fix.snippet for fix in fixes))


def test_nonfinite_custom_cell_points_at_its_own_forward():
    finding = judge([core("custom", math.nan, name="cell", finite=False)], 1e-3)[3][0]
    assert finding.id == "nonfinite-values" and finding.fixes == ["clip-grad-norm"]
    assert "the cell's own forward" in finding.message
    assert_no_builtin_words(finding.message)


def test_transient_growth_in_a_custom_cell_calls_for_clipping_not_weight_hh():
    jacobian = JacobianSummary(Extremes(0.5, 0.5), Extremes(10.02, 10.02), samples=100)
    status, _, _, findings, fixes = judge(
        [core("custom", -0.001, name="cell", jacobian=jacobian)], 1e-3
    )
    assert status == "healthy"
    assert [(f.id, f.severity, f.fixes) for f in findings] == [
        ("transient-growth", "warning", ["clip-grad-norm"])
    ]
    assert_no_builtin_words(findings[0].message, *(fix.snippet for fix in fixes))
