"""gradscope: measure whether gradients survive the distance a PyTorch model must learn across."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["GradientHealthError", "GradscopeError", "Monitor", "Report", "__version__", "analyze"]

from gradscope.errors import GradscopeError
from gradscope.report import GradientHealthError, Report

if TYPE_CHECKING:
    from gradscope.api import analyze
    from gradscope.monitor import Monitor


def __getattr__(name: str) -> Any:
    """Import the torch-heavy API on first use, so ``import gradscope`` stays light."""
    if name == "analyze":
        from gradscope.api import analyze

        return analyze
    if name == "Monitor":
        from gradscope.monitor import Monitor

        return Monitor
    raise AttributeError(f"module 'gradscope' has no attribute {name!r}")
