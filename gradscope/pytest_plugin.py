"""gradscope's pytest plugin: a ``gradscope`` fixture for tests that hold a model's gradients
to account. Torch is imported only when a test uses it.

    def test_encoder_keeps_gradients(gradscope):
        gradscope.analyze(build_encoder(), horizon=200).assert_healthy()

    def test_no_worse_than_last_release(gradscope):
        gradscope.analyze("encoder.pt").assert_no_regression("baseline.json")

A failing assertion's message is the diagnosis: the findings and the fixes that apply.
"""

from __future__ import annotations

from typing import Any

import pytest


class Gradscope:
    """What the ``gradscope`` fixture hands a test: :func:`gradscope.analyze` and shortcuts
    that analyse and assert at once."""

    def analyze(self, model_or_path: Any, example_input: Any = None, **options: Any) -> Any:
        """:func:`gradscope.analyze` with the same arguments; returns the Report."""
        from gradscope.api import analyze

        return analyze(model_or_path, example_input, **options)

    def assert_healthy(self, model_or_path: Any, example_input: Any = None, **options: Any) -> Any:
        """Analyse, then fail the test with the diagnosis unless every part is healthy."""
        report = self.analyze(model_or_path, example_input, **options)
        report.assert_healthy()
        return report

    def assert_no_regression(
        self,
        model_or_path: Any,
        baseline: str,
        tolerance: float | None = None,
        example_input: Any = None,
        **options: Any,
    ) -> Any:
        """Analyse, then fail the test naming every part worse than in ``baseline``."""
        report = self.analyze(model_or_path, example_input, **options)
        report.assert_no_regression(baseline, tolerance)
        return report


@pytest.fixture
def gradscope() -> Gradscope:
    """gradscope for a test: ``gradscope.analyze(model, ...).assert_healthy()``."""
    return Gradscope()
