"""Output formats: one :class:`Renderer` per format over the same report (or the reports of
``gradscope check``), chosen by name.

A renderer only reads reports; a new format is one new module with one class.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Protocol

from rich.console import Console

from gradscope.report import DEFAULT_FAIL_ON, Report, Word


class OutputFormat(Word):
    """What ``--format`` accepts."""

    TEXT = "text"
    JSON = "json"
    MARKDOWN = "markdown"
    GITHUB = "github"
    JUNIT = "junit"
    HTML = "html"


#: Where each format's renderer lives (imported when used).
RENDERERS = {
    OutputFormat.TEXT: "gradscope.render.text:TextRenderer",
    OutputFormat.JSON: "gradscope.render.json_format:JsonRenderer",
    OutputFormat.MARKDOWN: "gradscope.render.markdown:MarkdownRenderer",
    OutputFormat.GITHUB: "gradscope.render.github:GithubRenderer",
    OutputFormat.JUNIT: "gradscope.render.junit:JunitRenderer",
    OutputFormat.HTML: "gradscope.render.html:HtmlRenderer",
}
FORMATS = tuple(output_format.value for output_format in OutputFormat)


@dataclass(frozen=True)
class Checked:
    """One model ``gradscope check`` ran: its name, its checkpoint, and its report, or the
    one line that says why there is none."""

    name: str
    path: str
    report: Report | None = None
    error: str | None = None


class Renderer(Protocol):
    """Writes reports to a console (rich honours NO_COLOR and non-TTY output); what
    ``fail_on`` names is an error, the rest a warning, where the format tells them apart."""

    fail_on: tuple[str, ...]

    def write(self, report: Report, console: Console) -> None:
        """Write ``report`` to ``console``."""
        ...

    def write_checks(self, checked: list[Checked], console: Console) -> None:
        """Write the models ``gradscope check`` ran, in order."""
        ...


def renderer(output_format: str, fail_on: tuple[str, ...] = DEFAULT_FAIL_ON) -> Renderer:
    """The renderer of ``output_format`` (one of FORMATS)."""
    module, name = RENDERERS[OutputFormat(output_format)].split(":")
    return getattr(importlib.import_module(module), name)(fail_on)


def write(
    report: Report,
    output_format: str,
    console: Console,
    fail_on: tuple[str, ...] = DEFAULT_FAIL_ON,
) -> None:
    """Write ``report`` to ``console`` in ``output_format`` (one of FORMATS)."""
    renderer(output_format, fail_on).write(report, console)


def write_checks(
    checked: list[Checked],
    output_format: str,
    console: Console,
    fail_on: tuple[str, ...] = DEFAULT_FAIL_ON,
) -> None:
    """Write the models ``gradscope check`` ran in ``output_format``."""
    renderer(output_format, fail_on).write_checks(checked, console)
