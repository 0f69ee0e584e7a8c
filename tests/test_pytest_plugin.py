"""The pytest plugin, as a user's test suite meets it (pytester runs a fresh pytest)."""

from __future__ import annotations

import torch

from tests.helpers.models import orthogonal, rnn_with_recurrence

TESTS = """
import torch
from tests_models import rnn


def test_healthy(gradscope):
    gradscope.analyze(rnn(0.99), steps=20).assert_healthy()


def test_vanishing(gradscope):
    gradscope.assert_healthy(rnn(0.5), steps=20)


def test_no_regression(gradscope):
    gradscope.analyze(rnn(0.99), steps=20).assert_no_regression("baseline.json")


def test_regression(gradscope):
    gradscope.assert_no_regression(rnn(0.97), "baseline.json", steps=20)
"""

MODELS = """
import torch
from tests.helpers.models import orthogonal, rnn_with_recurrence


def rnn(gain):
    torch.manual_seed(0)
    model = rnn_with_recurrence(gain * orthogonal(8, seed=1))
    with torch.no_grad():
        model.weight_ih_l0.normal_(0, 0.05)
    return model
"""


def test_the_fixture_asserts_health_and_regressions_with_the_diagnosis(pytester, monkeypatch):
    import gradscope

    monkeypatch.syspath_prepend(str(pytester.path))
    pytester.makepyfile(tests_models=MODELS, test_models=TESTS)
    torch.manual_seed(0)
    model = rnn_with_recurrence(0.99 * orthogonal(8, seed=1))
    with torch.no_grad():
        model.weight_ih_l0.normal_(0, 0.05)
    report = gradscope.analyze(model, steps=20)
    (pytester.path / "baseline.json").write_text(report.to_json())

    result = pytester.runpytest("-q")  # the plugin loads by its entry point

    result.assert_outcomes(passed=2, failed=2)
    text = result.stdout.str()
    assert "GradientHealthError: gradscope: vanishing" in text
    assert "[vanishing] (model) (rnn_tanh)" in text and "fixes: use-lstm, use-gru" in text
    assert "worse than the baseline baseline.json" in text and "memory horizon" in text
