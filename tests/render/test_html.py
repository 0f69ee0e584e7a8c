"""The HTML report: well formed, self-contained (no external reference), every section and
chart there for the demo models, each chart with a text alternative."""

from __future__ import annotations

import io
import re

import pytest
import torch
from rich.console import Console

import gradscope
from gradscope.cli import main
from gradscope.demo import DEMO_DEEP_MODELS, DEMO_MODELS, SequenceModel
from gradscope.render import Checked
from gradscope.render.html import HtmlRenderer

from tests.helpers.html_check import assert_self_contained, parsed


def rendered(report: gradscope.Report) -> str:
    buffer = io.StringIO()
    HtmlRenderer().write(report, Console(file=buffer))
    return buffer.getvalue()


def demo(name: str, what_if: bool = False) -> tuple[gradscope.Report, str]:
    chosen = next(d for d in (*DEMO_MODELS, *DEMO_DEEP_MODELS) if d.name == name)
    torch.manual_seed(0)
    model = chosen.build()
    if chosen in DEMO_MODELS:
        model = SequenceModel(model)
    report = (
        gradscope.analyze(model, steps=30, what_if=what_if)
        if chosen in DEMO_MODELS
        else (gradscope.analyze(model, what_if=what_if))
    )
    return report, rendered(report)


@pytest.mark.parametrize("name", ["lstm-2-layer", "lstm-bidir", "rnn", "mlp-sigmoid", "residual"])
def test_the_demo_models_render_to_well_formed_self_contained_pages(name):
    report, page = demo(name)
    structure = parsed(page)
    assert_self_contained(page, structure)
    text = " ".join(structure.text)
    for section in ("Verdict", "Checkpoint and probe"):
        assert section in text
    assert report.status in text
    svgs = structure.tags.count("svg")
    # every chart opens with its text alternative: a title and a description
    described = re.findall(r"<svg[^>]*>\s*<title>[^<]+</title>\s*<desc>[^<]+</desc>", page)
    assert svgs > 0 and len(described) == svgs
    if report.recurrent:
        assert "Recurrent cores" in text and "Lyapunov" in text
        heatmaps = 1 if len(report.recurrent) > 1 else 0
        sequence = 1 if report.sequence is not None else 0
        assert svgs == 2 * len(report.recurrent) + heatmaps + sequence
        assert "memory horizon" in text and "lag 0 x epsilon (1,000x down)" in text
        assert all(f"<h3>{core.label} " in page for core in report.recurrent)
    if report.layers:
        assert "Depth stack" in text
        assert svgs >= 2
        assert all(layer.name in text for layer in report.layers)
    for fix in report.fixes:
        assert fix.id in text


def test_a_stacked_or_bidirectional_model_gets_its_layer_by_lag_heatmap():
    report, page = demo("lstm-bidir")
    assert len(report.recurrent) == 2
    assert "layer x lag" in page
    assert all(core.label in page for core in report.recurrent)


def test_text_is_escaped():
    report, _ = demo("rnn")
    report.model.notes.append("<script>alert(1)</script> & more")
    page = rendered(report)
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_check_writes_one_page_with_a_section_per_model():
    report, _ = demo("rnn")
    buffer = io.StringIO()
    HtmlRenderer().write_checks(
        [Checked("encoder", "enc.pt", report), Checked("broken", "b.pt", error="no such file")],
        Console(file=buffer),
    )
    page = buffer.getvalue()
    structure = parsed(page)
    assert_self_contained(page, structure)
    assert "encoder" in page and "no such file" in page


def test_html_on_the_command_line(tmp_path, capsys):
    torch.manual_seed(0)
    path = tmp_path / "gru.pt"
    torch.save(torch.nn.GRU(4, 8), path)
    out = tmp_path / "reports" / "gru.html"
    code = main(["analyze", str(path), "--steps", "12", "--html", str(out), "--format", "json"])
    captured = capsys.readouterr()
    assert code in (0, 1)
    assert captured.out.startswith("{")  # stdout keeps the chosen format
    parsed(out.read_text(encoding="utf-8"))
    code = main(["analyze", str(path), "--steps", "12", "--format", "html", "--no-what-if"])
    assert code in (0, 1)
    parsed(capsys.readouterr().out)


def test_an_unwritable_html_path_is_one_line(tmp_path, capsys):
    torch.manual_seed(0)
    path = tmp_path / "gru.pt"
    torch.save(torch.nn.GRU(4, 8), path)
    blocked = tmp_path / "file"
    blocked.write_text("x")
    code = main(["analyze", str(path), "--steps", "8", "--html", str(blocked / "r.html")])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith("gradscope: error: --html") and captured.err.count("\n") == 1


def test_a_report_shows_itself_in_a_notebook_and_as_a_page():
    report, page = demo("lstm-2-layer")
    fragment = report._repr_html_()
    assert fragment in page and fragment.startswith("<h2>Verdict</h2>")
    assert report.to_html() == page


def test_the_header_names_each_row_and_says_what_it_does_not_know():
    report, page = demo("mlp-sigmoid")
    assert "<th scope='col'></th>" not in page  # no empty header row
    assert "<th scope='row'>model</th>" in page
    assert "horizon None" not in page and "judged over</th><td>epsilon 0.001" in page
    report.model.class_name = None
    assert "architecture inferred from weights" in rendered(report)


def test_a_measured_fix_shows_its_effect_as_a_table_before_its_snippet():
    report, page = demo("lstm-2-layer", what_if=True)
    measured = [fix for fix in report.fixes if fix.effect]
    assert measured
    fix = measured[0]
    section = page[page.index(f"<code>{fix.id}</code>") :]
    table = section[section.index("<table>") : section.index("</table>")]
    assert "before" in table and "after (on a copy)" in table
    assert section.index("</table>") < section.index("<pre>")


def test_a_long_stack_folds_its_table_under_its_charts():
    report, page = demo("mlp-sigmoid")
    assert len(report.layers) > 12
    depth = page[page.index("<h2>Depth stack</h2>") :]
    assert depth.index("<svg") < depth.index("<details>") < depth.index("<table>")
    assert f"the numbers of all {len(report.layers)} blocks" in depth


def test_the_numbers_section_shows_origins_weights_and_headroom():
    from tests.helpers import faults

    torch.manual_seed(0)
    model = faults.mlp_with_inf_weight().double()
    report = gradscope.analyze(model, input_shape=(8, 16), what_if=False)
    page = rendered(report)
    assert_self_contained(page, parsed(page))
    numbers = page[page.index("<h2>Numbers</h2>") :]
    assert "2.0.weight" in numbers and "nonfinite-weight" in numbers
    assert "<td>forward</td><td>NaN</td><td>2.0 (Linear)</td><td>linear</td>" in numbers
    for dtype in ("float16", "bfloat16", "float32"):
        assert f"<td>{dtype}</td>" in numbers
