"""Rendering a report to plain text, as the render tests read it."""

from __future__ import annotations

import io

from rich.console import Console

from gradscope.render import write
from gradscope.report import Report


def plain_console(buffer: io.StringIO, width: int = 80) -> Console:
    return Console(file=buffer, width=width, color_system=None, force_terminal=False)


def rendered(report: Report, output_format: str = "text") -> str:
    buffer = io.StringIO()
    write(report, output_format, plain_console(buffer))
    return buffer.getvalue()
