"""The CI formats over the same reports: markdown and junit against golden files (the junit
parsed as XML), GitHub workflow commands, and check's lists of models."""

from __future__ import annotations

import dataclasses
import io
from xml.etree import ElementTree

from gradscope.render import Checked, write_checks
from gradscope.render.github import escape_data, escape_property

from tests.helpers import depth_samples
from tests.helpers.rendering import plain_console, rendered
from tests.helpers.samples import core, report_of


def vanishing():
    return report_of(core("rnn_tanh", -0.675))


def checks_text(checked, output_format):
    buffer = io.StringIO()
    write_checks(checked, output_format, plain_console(buffer))
    return buffer.getvalue()


def test_markdown_for_a_vanishing_rnn_matches_the_golden_file(golden):
    golden("vanishing_rnn.md", rendered(vanishing(), "markdown"))


def test_markdown_for_a_deep_stack_has_its_row_and_fixes(golden):
    text = rendered(depth_samples.sigmoid_mlp_report(), "markdown")
    golden("depth_sigmoid_mlp.md", text)
    assert "| depth |" in text and "```python" in text


def test_junit_for_a_vanishing_rnn_matches_the_golden_file_and_parses(golden):
    text = rendered(vanishing(), "junit")
    golden("vanishing_rnn.junit.xml", text)
    root = ElementTree.fromstring(text.split("\n", 1)[1])
    assert root.tag == "testsuites" and root.get("failures") == "1" and root.get("tests") == "2"
    (suite,) = root
    failure = suite.find("testcase/failure")
    assert failure is not None and failure.get("type") == "vanishing-gradient"


def test_junit_passes_what_fail_on_does_not_name():
    buffer = io.StringIO()
    from gradscope.render import write

    write(vanishing(), "junit", plain_console(buffer), fail_on=("exploding",))
    root = ElementTree.fromstring(buffer.getvalue().split("\n", 1)[1])
    assert root.get("failures") == "0"


def test_github_annotations_are_errors_for_what_fails_and_escaped():
    report = vanishing()
    report = dataclasses.replace(
        report, model=dataclasses.replace(report.model, path="models/rnn,v2.pt")
    )
    lines = rendered(report, "github").splitlines()
    assert lines and all(
        line.startswith("::error file=models/rnn%2Cv2.pt,title=") for line in lines
    )
    assert "title=gradscope vanishing-gradient::" in lines[0]
    assert escape_data("50%\nnext") == "50%25%0Anext"
    assert escape_property("a:b,c") == "a%3Ab%2Cc"
    ignored = report.ignoring(["vanishing-gradient"])
    assert rendered(ignored, "github").startswith("::notice ")


def test_checks_in_every_format_list_every_model_and_the_one_not_checked(golden):
    checked = [
        Checked("rnn", "rnn.pt", vanishing()),
        Checked("mlp", "mlp.pt", depth_samples.relu_mlp_report()),
        Checked("broken", "broken.pt", error="broken.pt is a text file, not a checkpoint"),
    ]
    text = checks_text(checked, "text")
    golden("check.txt", text)
    assert "rnn" in text and "mlp" in text and "broken: error: broken.pt is a text file" in text
    golden("check.md", checks_text(checked, "markdown"))
    xml = checks_text(checked, "junit")
    root = ElementTree.fromstring(xml.split("\n", 1)[1])
    assert [suite.get("name") for suite in root] == ["rnn", "mlp", "broken"]
    assert root.get("errors") == "1" and root.get("failures") == "1"
    github = checks_text(checked, "github")
    assert "::error file=broken.pt,title=gradscope%3A broken not checked::" in github
    import json

    data = json.loads(checks_text(checked, "json"))
    assert [m["name"] for m in data["models"]] == ["rnn", "mlp", "broken"]
    assert data["models"][2] == {
        "name": "broken",
        "path": "broken.pt",
        "error": "broken.pt is a text file, not a checkpoint",
    }


def test_the_same_report_gives_the_same_bytes():
    for output_format in ("json", "markdown", "junit", "github"):
        assert rendered(vanishing(), output_format) == rendered(vanishing(), output_format)
