"""The demo's side-by-side view of recurrent models and deep stacks."""

from __future__ import annotations

import io
import re
from types import SimpleNamespace

from gradscope.render.demo import write_demo

from tests.helpers import depth_samples
from tests.helpers.rendering import plain_console
from tests.helpers.samples import core, report_of


def demo_rendered(results) -> str:
    buffer = io.StringIO()
    write_demo(results, "text", plain_console(buffer))
    return buffer.getvalue()


def test_demo_shows_deep_stacks_side_by_side():
    deep = [
        (SimpleNamespace(name="mlp-sigmoid", description="sigmoid, Xavier"), report)
        for report in [depth_samples.sigmoid_mlp_report()]
    ]
    deep += [
        (SimpleNamespace(name="mlp-relu", description="ReLU, He"), depth_samples.relu_mlp_report()),
        (SimpleNamespace(name="residual", description="x + F(x)"), depth_samples.residual_report()),
    ]
    text = demo_rendered(deep)
    assert "recurrent models" not in text and "deep feed-forward and residual stacks" in text
    assert "• mlp-sigmoid   x mlp-relu   o residual" in text
    assert "block 1 (input side)" in text and "block 50 (output side)" in text
    for name, status in [("mlp-sigmoid", "vanishing"), ("mlp-relu", "healthy")]:
        assert re.search(rf"{name} .* {status}", text), name
    assert max(len(line) for line in text.splitlines()) <= 80


def test_demo_with_recurrent_models_and_deep_stacks_shows_both():
    lstm = report_of(core("lstm", -0.01))
    results = [
        (SimpleNamespace(name="rnn", description="tanh"), report_of(core("rnn_tanh", -0.675))),
        (SimpleNamespace(name="lstm-forget-1", description="forget 1"), lstm),
        (SimpleNamespace(name="mlp", description="sigmoid"), depth_samples.sigmoid_mlp_report()),
    ]
    text = demo_rendered(results)
    assert text.index("recurrent models") < text.index("deep feed-forward")
    assert "probe gaussian: input 64×512" in text


def test_at_80_columns_the_tables_name_models_and_a_legend_says_what_they_are():
    deep = [
        (SimpleNamespace(name="mlp-sigmoid", description="50-layer sigmoid MLP, Xavier"), r)
        for r in [depth_samples.sigmoid_mlp_report()]
    ]
    deep.append(
        (
            SimpleNamespace(name="residual-scaled", description="50 residual blocks, alpha 1"),
            depth_samples.residual_report(),
        )
    )
    text = demo_rendered(deep)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    # whole names, one row each, and each description whole on one legend line
    assert any(line.startswith("│ residual-scaled ") for line in lines)
    assert "mlp-sigmoid      50-layer sigmoid MLP, Xavier" in text
    assert "residual-scaled  50 residual blocks, alpha 1" in text


def test_wide_consoles_keep_the_descriptions_in_the_table():
    deep = [
        (SimpleNamespace(name="mlp-sigmoid", description="50-layer sigmoid MLP, Xavier"), r)
        for r in [depth_samples.sigmoid_mlp_report()]
    ]
    buffer = io.StringIO()
    write_demo(deep, "text", plain_console(buffer, width=120))
    assert re.search(r"│ mlp-sigmoid +│ 50-layer sigmoid MLP, Xavier +│", buffer.getvalue())
