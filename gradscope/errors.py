"""The one exception gradscope raises for bad input: the CLI turns it into exit 2."""

from __future__ import annotations


class GradscopeError(Exception):
    """A problem with the user's input or options, with a one-line message saying what to do."""
