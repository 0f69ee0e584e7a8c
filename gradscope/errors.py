"""The one exception gradscope raises for bad input: the CLI turns it into exit 2."""

from __future__ import annotations


class GradscopeError(Exception):
    """A problem with the user's input or options, with a one-line message saying what to do."""


def first_line(error: BaseException, limit: int = 160) -> str:
    """An exception's message cut to one line, for a one-line error message."""
    text = str(error).strip()
    if "WeightsUnpickler error:" in text:  # torch wraps the reason in advice to load unsafely
        text = text.split("WeightsUnpickler error:", 1)[1].strip()
    line = (text.splitlines() or [""])[0].strip()
    return line if len(line) <= limit else line[: limit - 3] + "..."
