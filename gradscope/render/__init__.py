"""Output formats: each module has ``write(report, console)`` over the same report."""

from __future__ import annotations

import importlib

from rich.console import Console

from gradscope.report import Report

FORMATS = {"text": "gradscope.render.text", "json": "gradscope.render.json_format"}


def write(report: Report, output_format: str, console: Console) -> None:
    """Write ``report`` to ``console`` in ``output_format`` (one of FORMATS)."""
    importlib.import_module(FORMATS[output_format]).write(report, console)
