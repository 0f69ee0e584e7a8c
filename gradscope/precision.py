"""The range of each floating-point dtype, and how much of it a model's values use.

Pure numbers, no torch: the limits are IEEE 754 half and single, bfloat16 (float32's exponent
with an 8-bit significand) and double, checked against ``torch.finfo`` by the tests.
``headroom`` compares the largest activation and gradient an analysis saw, and where each
part's gradient norm falls below a dtype's smallest normal, with every dtype's limits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from gradscope.report import Headroom, Peak, Underflow


@dataclass(frozen=True)
class Limits:
    """A dtype's largest finite value, smallest normal, and smallest subnormal."""

    name: str
    max: float
    smallest_normal: float
    smallest_subnormal: float


LIMITS = {
    "float16": Limits("float16", 65504.0, 2.0**-14, 2.0**-24),
    "bfloat16": Limits("bfloat16", 3.3895313892515355e38, 2.0**-126, 2.0**-133),
    "float32": Limits("float32", 3.4028234663852886e38, 2.0**-126, 2.0**-149),
    "float64": Limits("float64", 1.7976931348623157e308, 2.0**-1022, 2.0**-1074),
}
#: The dtypes a headroom line compares: those people train in.
COMPARED = ("float16", "bfloat16", "float32")
#: Loss scaling's usual starting scale (``torch.amp.GradScaler``'s ``init_scale``).
GRAD_SCALER_INIT = 2.0**16


def decades_below(value: float | None, ceiling: float) -> float | None:
    """log10(ceiling / value): how many decades ``value`` sits below ``ceiling`` (negative:
    above it); None for a value that is zero, missing or not finite."""
    if value is None or not math.isfinite(value) or value <= 0:
        return None
    return math.log10(ceiling / value)


def first_lag_below(norms_by_lag: Sequence[float], floor: float) -> int | None:
    """The first lag whose gradient norm is below ``floor`` (and not exactly 0: a gradient
    that never reached that step has nothing to lose), or None."""
    for lag, value in enumerate(norms_by_lag):
        if value is not None and math.isfinite(value) and 0 < value < floor:
            return lag
    return None


def headroom(
    activation: Peak | None,
    gradient: Peak | None,
    gradients_by_lag: dict[str, Sequence[float]],
    dtypes: Sequence[str] = COMPARED,
) -> list[Headroom]:
    """For each dtype: the decades between the largest activation (and gradient) and its
    maximum, and, for each part, the first lag at which the gradient norm falls below its
    smallest normal (every element of a vector is at most its norm, so all of that gradient
    is subnormal there: it keeps fewer bits and, below the smallest subnormal, becomes 0)."""
    rows = []
    for name in dtypes:
        limits = LIMITS[name]
        underflows = []
        for part, norms in gradients_by_lag.items():
            lag = first_lag_below(norms, limits.smallest_normal)
            if lag is not None:
                underflows.append(
                    Underflow(part, lag, first_lag_below(norms, limits.smallest_subnormal))
                )
        rows.append(
            Headroom(
                dtype=name,
                max=limits.max,
                smallest_normal=limits.smallest_normal,
                activation_decades=decades_below(
                    activation.value if activation else None, limits.max
                ),
                gradient_decades=decades_below(gradient.value if gradient else None, limits.max),
                underflow=underflows,
            )
        )
    return rows
