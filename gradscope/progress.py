"""Progress notes from long computations, for whoever listens (the command line's stderr).

Computation calls :func:`note` with what it is about to do; :func:`reporting_to` routes the
notes of a run to a callback. Nothing here prints, and without a listener a note costs
nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

Listener = Callable[[str], None]

_listener: ContextVar[Listener | None] = ContextVar("gradscope_progress", default=None)


def note(message: str) -> None:
    """Tell the listener, if any, what the computation is doing now."""
    listener = _listener.get()
    if listener is not None:
        listener(message)


@contextmanager
def reporting_to(listener: Listener) -> Iterator[None]:
    """Send every :func:`note` made inside the block to ``listener``."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)
