"""A trial run: the model run once on a probe only to watch what it does (which module reads
which input, which module loops), quietly."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch


def trial_run(call: Callable[[], object], traced: bool = False) -> bool:
    """Run ``call`` with torch's warnings kept off stderr (the measured runs say what is to be
    said) and autograd on only when ``traced``; True when it ran through. A failure is
    silent: the measured run meets it again and says why."""
    try:
        with warnings.catch_warnings(), torch.set_grad_enabled(traced):
            warnings.simplefilter("ignore")
            call()
    except Exception:
        return False
    return True
