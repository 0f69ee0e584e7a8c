"""The verdict rule: a status for each core over its distance, and for a stack over its depth.

A core is ``vanishing`` when its gradient shrinks by more than 1/epsilon within its distance L
(lambda_1 < 0 and a memory horizon shorter than L), ``exploding`` when it grows so, ``nonfinite``
when NaN or Inf appear, else ``healthy``; a stack is judged by the gradient at its input side
against its output side. The overall status is the worst part's. Pure, no torch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from gradscope.report import DepthLayer, DepthStack, RecurrentCore, Status
from gradscope.theory import memory_horizon


def core_status(top_exponent: float, finite: bool, distance: int, epsilon: float) -> Status:
    """The verdict for one core over ``distance`` steps at tolerance ``epsilon``."""
    if not finite or math.isnan(top_exponent) or top_exponent == math.inf:
        return Status.NONFINITE
    tau = memory_horizon(top_exponent, epsilon)
    if tau is None or tau >= distance:
        return Status.HEALTHY
    return Status.VANISHING if top_exponent < 0 else Status.EXPLODING


def worst(statuses: Sequence[str]) -> Status:
    """The worst status: nonfinite > exploding > vanishing > healthy."""
    return max(map(Status, statuses), key=lambda status: status.rank, default=Status.HEALTHY)


def with_distances(
    cores: list[RecurrentCore], requested: int | None, probe_steps: int
) -> list[RecurrentCore]:
    """Each core's distance L: ``--horizon`` when given, else the probe length; a core that
    ran fewer steps than the probe (a decoder, a cell called a few times) at most its own.

    A core that runs as long as the probe may be asked about a longer horizon (its rate
    extrapolates); one whose length the model fixes cannot carry information further than
    it runs, whatever the horizon.
    """
    wanted = requested or probe_steps
    return [
        dataclasses.replace(
            core, distance=min(wanted, core.steps) if core.steps < probe_steps else wanted
        )
        for core in cores
    ]


def assess_cores(cores: list[RecurrentCore], epsilon: float) -> list[RecurrentCore]:
    """The cores with their status set by the verdict rule over their own horizon."""
    return [
        dataclasses.replace(
            core, status=core_status(core.top_exponent, core.finite, core.distance, epsilon)
        )
        for core in cores
    ]


def depth_ratio(stack: DepthStack) -> float:
    """The gradient at the input side over the output side; 1 when neither carries any."""
    if stack.output_grad_norm == 0:
        return 1.0 if stack.input_grad_norm == 0 else math.inf
    return stack.input_grad_norm / stack.output_grad_norm


def first_nonfinite(stack: DepthStack, layers: Sequence[DepthLayer]) -> str | None:
    """Where NaN or Inf first shows among the numbers the verdict reads; None if nowhere.

    A block's ``gain`` counts only where a gradient reached its output: with none, the gain is
    0/0 by construction, not a sign of NaN in the model.
    """
    if not all(math.isfinite(x) for x in (stack.input_grad_norm, stack.output_grad_norm)):
        return "the stack's input or output gradient"
    for layer in layers:
        numbers = [layer.grad_norm, layer.chi]
        if layer.grad_norm != 0:
            numbers.append(layer.gain)
        if layer.branch_chi is not None:
            numbers.append(layer.branch_chi)
        if not all(math.isfinite(x) for x in numbers):
            return layer.name
    return None


def depth_status(stack: DepthStack, layers: Sequence[DepthLayer], epsilon: float) -> Status:
    """The verdict over the stack: the input-side gradient against the output side's."""
    if first_nonfinite(stack, layers) is not None:
        return Status.NONFINITE
    ratio = depth_ratio(stack)
    if ratio < epsilon:
        return Status.VANISHING
    if ratio > 1 / epsilon:
        return Status.EXPLODING
    return Status.HEALTHY


def assess_depth(stack: DepthStack, layers: list[DepthLayer], epsilon: float) -> DepthStack:
    """The stack with its status set by the verdict rule over its depth (``horizon`` = blocks)."""
    return dataclasses.replace(
        stack, status=depth_status(stack, layers, epsilon), distance=stack.blocks
    )
