"""Closed-form relations of the science gradscope measures by; plain floats, no torch."""

from __future__ import annotations

import math


def memory_horizon(top_exponent: float, epsilon: float) -> float | None:
    """``ln(1/eps) / |lambda_1|``: the lag over which the gradient changes by 1/eps.

    ``None`` when it is unbounded (lambda_1 = 0) or unknown (NaN); 0 when lambda_1 = -inf.
    """
    if math.isnan(top_exponent) or top_exponent == 0:
        return None
    return math.log(1 / epsilon) / abs(top_exponent)


def suggested_gate_bias(distance: int, epsilon: float) -> float:
    """Total gate bias b whose gate sigmoid(b) alone keeps 1/eps of the gradient over L steps.

    Solves ``sigmoid(b) ** L = eps``; never below 1 (Jozefowicz et al. 2015).
    """
    keep = epsilon ** (1 / distance)
    return max(1.0, math.log(keep / (1 - keep)))
