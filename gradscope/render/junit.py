"""``--format junit``: one test case per core, stack and sequence view (and one for what was
not measured), failing where ``--fail-on`` fails; one test suite per model for ``check``.
No timestamps: the same report gives the same file."""

from __future__ import annotations

from xml.etree import ElementTree

from rich.console import Console

from gradscope.render import Checked
from gradscope.render.parts import other_findings, parts
from gradscope.report import DEFAULT_FAIL_ON, NUMERICS_VIEWS, Finding, Report, finding_fails


def _case(suite: ElementTree.Element, model: str, name: str) -> ElementTree.Element:
    return ElementTree.SubElement(
        suite, "testcase", {"classname": f"gradscope.{model}", "name": name, "time": "0"}
    )


def _fail(case: ElementTree.Element, findings: list[Finding]) -> None:
    first = findings[0]
    failure = ElementTree.SubElement(case, "failure", {"type": first.id, "message": first.message})
    failure.text = "\n".join(f"[{f.id}] {f.message}" for f in findings)


def _suite(parent: ElementTree.Element, model: str, report: Report, fail_on: tuple) -> None:
    suite = ElementTree.SubElement(parent, "testsuite", {"name": model})
    cases = [(part.name, part.findings) for part in parts(report)]
    others = other_findings(report)
    numbers = [f for f in others if f.where.get("view") in NUMERICS_VIEWS]
    if report.numerics is not None:
        cases.append(("numerics", numbers))
    cases.append(("coverage", [f for f in others if f not in numbers]))
    for name, findings in cases:
        case = _case(suite, model, name)
        failing = [f for f in findings if finding_fails(f, fail_on)]
        if failing:
            _fail(case, failing)
        else:
            notes = [f"[{f.id}{' ignored' if f.ignored else ''}] {f.message}" for f in findings]
            if notes:
                ElementTree.SubElement(case, "system-out").text = "\n".join(notes)


def _error_suite(parent: ElementTree.Element, entry: Checked) -> None:
    suite = ElementTree.SubElement(parent, "testsuite", {"name": entry.name})
    case = _case(suite, entry.name, "load")
    error = ElementTree.SubElement(
        case, "error", {"type": "gradscope", "message": entry.error or ""}
    )
    error.text = entry.error or ""


def _count(root: ElementTree.Element) -> None:
    """Fill in the counts every suite and the whole file state."""
    totals = {"tests": 0, "failures": 0, "errors": 0}
    for suite in root:
        counts = {
            "tests": len(suite.findall("testcase")),
            "failures": len(suite.findall("testcase/failure")),
            "errors": len(suite.findall("testcase/error")),
        }
        for key, value in counts.items():
            suite.set(key, str(value))
            totals[key] += value
        suite.set("skipped", "0")
        suite.set("time", "0")
    for key, value in totals.items():
        root.set(key, str(value))


class JunitRenderer:
    """The report as a JUnit XML file that Jenkins and GitLab read."""

    def __init__(self, fail_on: tuple[str, ...] = DEFAULT_FAIL_ON) -> None:
        self.fail_on = fail_on

    def write(self, report: Report, console: Console) -> None:
        """One suite, named after the checkpoint."""
        root = ElementTree.Element("testsuites", {"name": "gradscope"})
        _suite(root, report.model.path or report.model.class_name or "model", report, self.fail_on)
        self._emit(root, console)

    def write_checks(self, checked: list[Checked], console: Console) -> None:
        """One suite per model; a model not checked is an error."""
        root = ElementTree.Element("testsuites", {"name": "gradscope"})
        for entry in checked:
            if entry.report is None:
                _error_suite(root, entry)
            else:
                _suite(root, entry.name, entry.report, self.fail_on)
        self._emit(root, console)

    @staticmethod
    def _emit(root: ElementTree.Element, console: Console) -> None:
        _count(root)
        ElementTree.indent(root)
        text = ElementTree.tostring(root, encoding="unicode")
        console.file.write('<?xml version="1.0" encoding="UTF-8"?>\n' + text + "\n")
        console.file.flush()
