"""``--format github``: GitHub Actions workflow commands, one annotation per finding, pinned
to the checkpoint file: ``::error`` for what ``--fail-on`` fails on, ``::warning`` else."""

from __future__ import annotations

from rich.console import Console

from gradscope.render import Checked
from gradscope.report import DEFAULT_FAIL_ON, Report, finding_fails


def escape_data(text: str) -> str:
    """A workflow command's message, escaped as GitHub reads it."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value (file, title), escaped."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotations(report: Report, path: str | None, fail_on: tuple[str, ...]) -> list[str]:
    """One workflow command per finding of ``report``, pinned to ``path``."""
    lines = []
    for finding in report.findings:
        command = "error" if finding_fails(finding, fail_on) else "warning"
        if finding.ignored:
            command = "notice"
        title = f"gradscope {finding.id}" + (" (ignored)" if finding.ignored else "")
        where = f"file={escape_property(path)}," if path else ""
        lines.append(
            f"::{command} {where}title={escape_property(title)}::{escape_data(finding.message)}"
        )
    return lines


class GithubRenderer:
    """Annotations only: the summary goes to the step summary (markdown) or the log."""

    def __init__(self, fail_on: tuple[str, ...] = DEFAULT_FAIL_ON) -> None:
        self.fail_on = fail_on

    def write(self, report: Report, console: Console) -> None:
        """One workflow command per finding."""
        self._emit(annotations(report, report.model.path, self.fail_on), console)

    def write_checks(self, checked: list[Checked], console: Console) -> None:
        """The annotations of every model; an error for each that was not checked."""
        lines = []
        for entry in checked:
            if entry.report is None:
                title = escape_property(f"gradscope: {entry.name} not checked")
                where = escape_property(entry.path)
                lines.append(
                    f"::error file={where},title={title}::{escape_data(entry.error or '')}"
                )
            else:
                lines += annotations(entry.report, entry.path, self.fail_on)
        self._emit(lines, console)

    @staticmethod
    def _emit(lines: list[str], console: Console) -> None:
        if lines:
            console.file.write("\n".join(lines) + "\n")
            console.file.flush()
