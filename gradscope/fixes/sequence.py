"""Fixes for a sequence model whose input gradient does not reach across the horizon, worded
for what mixes time in it (convolutions, attention, a scan), never a recurrent cell swap."""

from __future__ import annotations

import math

from gradscope.fixes.recurrent import clip_snippet
from gradscope.fixes.registry import Advice
from gradscope.report import FixId, SequenceGradient

CONVOLUTIONS = ("Conv1d", "Conv2d", "Conv3d")
ATTENTION = ("MultiheadAttention", "attention")


def _reach_snippet(view: SequenceGradient, epsilon: float) -> str:
    needed = view.distance or view.steps
    layers = max(1, math.ceil(math.log2(max(needed, 2))))
    reach = view.effective_horizon
    lines = [f"# the loss feels inputs {reach} step(s) back; the task needs {needed}"]
    mixers = " ".join(view.mixers)
    if any(kind in mixers for kind in CONVOLUTIONS):
        lines += [
            "# temporal convolutions: receptive field = 1 + (kernel_size - 1) * sum(dilations);",
            f"# kernel_size=2 with dilations 1, 2, ..., 2**{layers - 1} reaches {2**layers} steps",
            f"dilations = [2 ** i for i in range({layers})]",
        ]
    if any(kind.lower() in mixers.lower() for kind in ATTENTION):
        lines += [
            "# attention: let every query see the whole span (no window or chunk limit in the",
            f"# mask), and give the positional encoding at least {needed} positions",
        ]
    if "scan" in mixers:
        lines += [
            "# a scan (state-space or gated linear recurrence): keep its decay a with",
            f"# a ** {needed} >= {epsilon:g}, i.e. log(a) >= {math.log(epsilon) / needed:.4f}",
        ]
    if "loop" in mixers:
        lines += [
            "# a recurrence the model loops itself: let each step keep more of its state,",
            "# s' = s + f(x, s) or a keeping gate biased open; name the module that computes",
            "# one step with --cell to measure it over time",
        ]
    if len(lines) == 1:
        lines += [
            "# let the layers that mix time reach the whole horizon: dilated convolutions",
            f"# (dilations 1, 2, ..., 2**{layers - 1}), attention over the whole span, or a",
            "# recurrent core with a keeping gate",
        ]
    return "\n".join(lines)


def _clip(view: SequenceGradient, epsilon: float) -> str:
    return clip_snippet([], epsilon)


#: The advice over the sequence view, by fix id.
OVER_SEQUENCE = {
    FixId.RECEPTIVE_FIELD: Advice(
        "Widen how far back the model reads",
        "Give the layers that mix time a reach of the whole horizon: more or dilated "
        "convolution layers, attention over the whole span, a slower decay in a scan.",
        _reach_snippet,
    ),
    FixId.CLIP_GRAD_NORM: Advice(
        "Clip the gradient norm in the training step",
        "Clip the global gradient norm after backward() and before the step.",
        _clip,
    ),
}
