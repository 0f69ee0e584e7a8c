"""What a fix is for one view: a title, what it changes, the code, and the evidence it cites."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Advice:
    """One fix as it applies to one view (recurrent cores, or a deep stack).

    ``snippet`` builds code fitted to the parts the findings name: ``(cores, epsilon)`` over
    time, ``(stack, layers)`` over depth. ``evidence``, over depth, names the measurement
    that calls for the fix beyond the finding's rate.
    """

    title: str
    what: str
    snippet: Callable[..., str]
    evidence: Callable[..., str] | None = None
