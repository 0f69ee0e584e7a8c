"""Output formats: one :class:`Renderer` per format over the same report, chosen by name.

A renderer only reads the report; a new format is one new module with one class.
"""

from __future__ import annotations

import importlib
from typing import Protocol

from rich.console import Console

from gradscope.report import Report, Word


class OutputFormat(Word):
    """What ``--format`` accepts."""

    TEXT = "text"
    JSON = "json"


#: Where each format's renderer lives (imported when used).
RENDERERS = {
    OutputFormat.TEXT: "gradscope.render.text:TextRenderer",
    OutputFormat.JSON: "gradscope.render.json_format:JsonRenderer",
}
FORMATS = tuple(output_format.value for output_format in OutputFormat)


class Renderer(Protocol):
    """Writes a whole report to a console (rich honours NO_COLOR and non-TTY output)."""

    def write(self, report: Report, console: Console) -> None:
        """Write ``report`` to ``console``."""
        ...


def renderer(output_format: str) -> Renderer:
    """The renderer of ``output_format`` (one of FORMATS)."""
    module, name = RENDERERS[OutputFormat(output_format)].split(":")
    return getattr(importlib.import_module(module), name)()


def write(report: Report, output_format: str, console: Console) -> None:
    """Write ``report`` to ``console`` in ``output_format`` (one of FORMATS)."""
    renderer(output_format).write(report, console)
