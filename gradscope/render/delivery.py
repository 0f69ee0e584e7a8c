"""Where reports go: stdout in the chosen format; with ``--output``, that format to a file
while the terminal shows the text report; under GitHub Actions, annotations in the log and
the markdown summary appended to the job's step summary."""

from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from gradscope.errors import GradscopeError
from gradscope.render import Checked, renderer
from gradscope.report import DEFAULT_FAIL_ON, Report


@dataclass(frozen=True)
class Delivery:
    """How to deliver: the format, a file for it (``--output``), GitHub's extras (None:
    only under GitHub Actions), what fails, and a file for the HTML report (``--html``)."""

    output_format: str = "text"
    output: str | None = None
    github: bool | None = None
    fail_on: tuple[str, ...] = DEFAULT_FAIL_ON
    html: str | None = None


def on_github(delivery: Delivery) -> bool:
    """Whether to add GitHub's annotations and step summary to a text report."""
    if delivery.github is not None:
        return delivery.github
    return os.environ.get("GITHUB_ACTIONS") == "true"


def write_file(path: str, text: str, flag: str = "--output") -> None:
    """Write ``text`` to ``path`` (given by ``flag``), making its folders as pytest's
    --junitxml does."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text, encoding="utf-8")
    except OSError as error:
        raise GradscopeError(f"{flag} {path}: cannot write it ({error.strerror})") from None


def _to_step_summary(path: str, text: str) -> None:
    """Append to GitHub's step summary; a file that cannot be written is a warning, never the
    run's outcome."""
    try:
        with Path(path).open("a", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as error:
        print(
            f"gradscope: warning: cannot append to GITHUB_STEP_SUMMARY {path} "
            f"({error.strerror}); the report above is complete",
            file=sys.stderr,
        )


def deliver(reports: Report | list[Checked], delivery: Delivery, stdout: Console) -> None:
    """Write ``reports`` (one report, or the models ``check`` ran) as ``delivery`` says."""
    terminal = "text" if delivery.output else delivery.output_format

    def emit(output_format: str, console: Console) -> None:
        chosen = renderer(output_format, delivery.fail_on)
        if isinstance(reports, Report):
            chosen.write(reports, console)
        else:
            chosen.write_checks(reports, console)

    emit(terminal, stdout)
    if delivery.output:
        buffer = io.StringIO()
        emit(delivery.output_format, Console(file=buffer, no_color=True, width=100, soft_wrap=True))
        write_file(delivery.output, buffer.getvalue())
    if delivery.html:
        buffer = io.StringIO()
        emit("html", Console(file=buffer, no_color=True))
        write_file(delivery.html, buffer.getvalue(), "--html")
    if terminal == "text" and on_github(delivery):
        emit("github", stdout)
        summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if summary:
            buffer = io.StringIO()
            emit("markdown", Console(file=buffer, no_color=True, soft_wrap=True))
            _to_step_summary(summary, buffer.getvalue())
