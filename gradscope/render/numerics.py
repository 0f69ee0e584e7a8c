"""The numbers section in words: the largest values the traced pass saw and each dtype's
headroom, as plain rows that the terminal, Markdown and HTML reports lay out each their way."""

from __future__ import annotations

import math

from gradscope.precision import GRAD_SCALER_INIT
from gradscope.report import Headroom, Numerics, Peak

HEADROOM_COLUMNS = (
    "dtype",
    "largest",
    "activation",
    "gradient",
    "gradient below its smallest normal",
)


def peak_words(peak: Peak | None) -> str:
    """``1.53 (linear in blocks.0)``; ``n/a`` when nothing was traced."""
    if peak is None:
        return "n/a"
    return f"{peak.value:.3g} ({peak.op} in {peak.module or '(model)'})"


def _decades(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value < 0:
        return f"over by {-value:.1f}"
    return f"{value:.1f}"


#: The parts an underflow cell names before it says "and N more".
NAMED_PARTS = 3


def _underflow(row: Headroom) -> str:
    """The parts whose gradient underflows, earliest first: ``l0 from lag 15; ...``."""
    if not row.underflow:
        return "none"
    earliest = sorted(row.underflow, key=lambda u: u.lag)
    named = "; ".join(u.place for u in earliest[:NAMED_PARTS])
    more = len(earliest) - NAMED_PARTS
    return named + (f"; and {more} more" if more > 0 else "")


def headroom_rows(numerics: Numerics) -> list[list[str]]:
    """One row per dtype: its largest value, the decades the largest activation and gradient
    sit below it, and where each part's gradient norm falls below its smallest normal."""
    return [
        [
            row.dtype,
            f"{row.max:.3g}",
            _decades(row.activation_decades),
            _decades(row.gradient_decades),
            _underflow(row),
        ]
        for row in numerics.headroom
    ]


def largest_line(numerics: Numerics) -> str:
    """``In float64: largest activation 1.53 (...), largest gradient 5.58 (...)``."""
    return (
        f"Traced in {numerics.dtype}: largest activation {peak_words(numerics.largest_activation)}"
        f", largest gradient {peak_words(numerics.largest_gradient)}"
    )


def underflow_summary(numerics: Numerics) -> str | None:
    """``In float16 the gradient of l0 falls below its smallest normal (6.1e-05) from lag 18:
    it underflows; bfloat16 keeps it.`` for the narrowest dtype that loses a gradient."""
    rows = {row.dtype: row for row in numerics.headroom}
    half, brain = rows.get("float16"), rows.get("bfloat16")
    if half is None or not half.underflow:
        return None
    first = min(half.underflow, key=lambda u: u.lag)
    kept = brain is not None and not any(u.part == first.part for u in brain.underflow)
    return (
        f"In float16 the gradient norm of {first.place} is below its smallest normal "
        f"({half.smallest_normal:.2g}): it underflows"
        + ("; bfloat16 keeps it." if kept else "; bfloat16 loses it too.")
    )


def headroom_legend(loss_at: int | str) -> str:
    """What the headroom columns mean, loss scaling's part, and the loss they are for."""
    lift = math.log10(GRAD_SCALER_INIT)
    text = (
        "activation, gradient: decades between the largest value and the dtype's largest; "
        f"float16 training scales the loss (torch.amp.GradScaler, {GRAD_SCALER_INIT:,.0f} at "
        f"first), which lifts every gradient {lift:.1f} decades: underflow comes that much "
        "later and overflow that much sooner; bfloat16 needs no scaling. The gradients are of "
        "gradscope's unit-projection loss at one step: a training loss scales them by its "
        "own size, and one summed over every step adds the later steps' gradients at each "
        "(--loss-at all measures that)"
    )
    if loss_at == "all":
        text += (
            "; with --loss-at all the loss sums over every step, so a step's gradient is the "
            "sum over the later steps' losses, up to the number of steps times one step's: "
            "that many times nearer overflow (a mean over steps divides it back)"
        )
    return text + "."
