"""The ``golden`` fixture: text compared with a file in golden/, or written there.

``python -m pytest tests/render --update-golden`` rewrites the golden files from the current
output (after an intended change to the text report); the diff then shows what changed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture
def golden(request) -> Callable[[str, str], None]:
    """``golden(name, text)``: assert ``text`` equals golden/``name``, first writing it there
    when pytest runs with ``--update-golden``."""
    update = request.config.getoption("--update-golden")

    def check(name: str, text: str) -> None:
        path = GOLDEN / name
        if update:
            path.write_text(text, encoding="utf-8")
        assert text == path.read_text(encoding="utf-8")

    return check
