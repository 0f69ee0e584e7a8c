"""What appliers share: the refusal that says why a fix cannot go on a copy, and seeded
initialisation in double precision."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


class NotApplied(Exception):
    """A fix gradscope cannot apply to a copy of this model; the message says why."""


def seeded(
    init: Callable[..., Tensor], like: Tensor, generator: torch.Generator, **kwargs: object
) -> Tensor:
    """``init`` (an ``nn.init`` function) drawn from ``generator`` in float64 for a tensor
    shaped like ``like``, then cast to its dtype and device: the same draw on any device."""
    drawn = torch.empty(like.shape, dtype=torch.float64)
    init(drawn, generator=generator, **kwargs)
    return drawn.to(dtype=like.dtype, device=like.device)
