"""``--format json``: the report contract (docs/design.md), and nothing else, on stdout."""

from __future__ import annotations

import json

from rich.console import Console

from gradscope.render import Checked
from gradscope.report import DEFAULT_FAIL_ON, SCHEMA_VERSION, Report


class JsonRenderer:
    """The report as JSON (schema_version 1); for ``check``, one entry per model."""

    def __init__(self, fail_on: tuple[str, ...] = DEFAULT_FAIL_ON) -> None:
        self.fail_on = fail_on

    def write(self, report: Report, console: Console) -> None:
        """Write the JSON, bypassing rich's markup and wrapping."""
        console.file.write(report.to_json() + "\n")
        console.file.flush()

    def write_checks(self, checked: list[Checked], console: Console) -> None:
        """``{"schema_version": 1, "models": [{"name", "path", "report" | "error"}]}``."""
        models = [
            {"name": c.name, "path": c.path}
            | ({"report": c.report.to_dict()} if c.report is not None else {"error": c.error})
            for c in checked
        ]
        data = {"schema_version": SCHEMA_VERSION, "models": models}
        console.file.write(json.dumps(data, indent=2, allow_nan=False) + "\n")
        console.file.flush()
