"""``--format json``: the report contract (docs/design.md), and nothing else, on stdout."""

from __future__ import annotations

from rich.console import Console

from gradscope.report import Report


class JsonRenderer:
    """The report as JSON (schema_version 1)."""

    def write(self, report: Report, console: Console) -> None:
        """Write the JSON, bypassing rich's markup and wrapping."""
        console.file.write(report.to_json() + "\n")
        console.file.flush()
