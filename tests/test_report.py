"""The JSON contract of docs/design.md and the Python API's assertion."""

from __future__ import annotations

import json
import math

import pytest

from gradscope import GradientHealthError

from tests.helpers.samples import CORE_KEYS, TOP_KEYS, core, report_of


def test_json_has_the_contract_keys_in_order_and_nulls_for_non_finite():
    lstm = core("lstm", 0.0, lyapunov=[0.0, -math.inf])
    data = json.loads(report_of(lstm, core("gru", -0.5, name="decoder")).to_json())
    assert list(data)[:5] == ["schema_version", "gradscope_version", "status", "settings", "model"]
    assert data.keys() >= TOP_KEYS
    assert data["schema_version"] == 1
    entry = data["recurrent"][0]
    assert entry.keys() >= CORE_KEYS
    assert entry["lyapunov"] == [0.0, None] and entry["memory_horizon"] is None
    assert set(entry["jacobian"]) >= {"spectral_radius", "sigma_max"}
    finding = data["findings"][0]
    assert set(finding) == {"id", "kind", "severity", "where", "message", "fixes", "ignored"}
    assert set(data["fixes"][0]) == {
        "id",
        "title",
        "detail",
        "snippet",
        "effect",
        "status_after",
        "measured",
        "helps",
    }


def test_assert_healthy_raises_an_assertion_error_with_the_diagnosis():
    report = report_of(core("rnn_tanh", -0.675))
    with pytest.raises(AssertionError) as caught:
        report.assert_healthy()
    assert isinstance(caught.value, GradientHealthError)
    assert "vanishing" in str(caught.value) and "use-lstm" in str(caught.value)
    report_of(core("lstm", -0.001)).assert_healthy()


def test_fails_honours_the_chosen_statuses():
    report = report_of(core("rnn_tanh", -0.675))
    assert report.fails()
    assert report.fails(("vanishing",))
    assert not report.fails(("exploding", "nonfinite"))


def test_deciding_core_is_the_worst_then_the_shortest_horizon():
    report = report_of(
        core("lstm", -0.3, name="a"), core("gru", -0.6, name="b"), core("lstm", -0.001, name="c")
    )
    assert report.deciding_core().name == "b"


def test_lag_counts_steps_before_the_last_time_step_in_both_directions():
    forward = core("rnn_tanh", -0.5, grad_norm=[1.0, 2.0, 3.0], steps=3)
    reverse = core("rnn_tanh", -0.5, grad_norm=[1.0, 2.0, 3.0], steps=3, direction="reverse")
    assert forward.grad_norm_by_lag == [3.0, 2.0, 1.0]
    assert reverse.grad_norm_by_lag == [3.0, 2.0, 1.0]
