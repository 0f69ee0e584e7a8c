"""``--format json``: the report contract of DESIGN.md, and nothing else, on stdout."""

from __future__ import annotations

from rich.console import Console

from gradscope.report import Report


def write(report: Report, console: Console) -> None:
    """Write the report as JSON (schema_version 1), bypassing rich's markup and wrapping."""
    console.file.write(report.to_json() + "\n")
    console.file.flush()
