"""The JSON format writes the report's own dictionary and nothing else, depth view included."""

from __future__ import annotations

import json
import math

from tests.helpers import depth_samples
from tests.helpers.rendering import rendered
from tests.helpers.samples import core, report_of


def test_json_format_writes_the_report_and_nothing_else():
    report = report_of(core("gru", -0.45))
    assert json.loads(rendered(report, "json")) == report.to_dict()


def test_json_format_writes_the_depth_layers_and_stack():
    report = depth_samples.mixed_report()
    report.layers[0].chi = math.nan
    report.stack.sigma_max = math.inf
    data = json.loads(rendered(report, "json"))
    assert data == report.to_dict()
    assert len(data["layers"]) == 20 and data["depth"]["blocks"] == 20
    first = data["layers"][0]
    assert {"name", "type", "grad_norm", "gain", "chi", "sigma_max", "residual"} <= set(first)
    assert first["name"] == "head.0" and first["chi"] is None
    assert data["depth"]["status"] == "vanishing" and data["depth"]["sigma_max"] is None
    assert data["findings"][0]["where"] == {
        "stack": "depth",
        "blocks": 20,
        "first": "head.0",
        "last": "head.38",
    }


def test_json_of_a_report_without_a_stack_has_empty_layers_and_no_depth():
    data = json.loads(rendered(report_of(core("gru", -0.45)), "json"))
    assert data["layers"] == [] and data["depth"] is None
