"""Fixes measured, not promised: each fix gradscope can apply goes on a copy of the model, the
same probe runs again with the same seed and settings, and the parts the fix is for are judged
again: before -> after (horizon and lambda_1 of a core, decades of a stack), the status after,
and whether it helped.

:mod:`gradscope.whatif.recurrent` applies the fixes over time, :mod:`gradscope.whatif.depth`
those over depth. A fix that changes no Jacobian gradscope can measure at these weights
(clipping bounds updates; a wider receptive field is a new architecture) says so; one that
cannot go on a copy of this model, or that the model's own forward cannot run, says why.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from gradscope.diagnosis import Diagnosis
from gradscope.diagnosis.verdict import assess_cores, assess_depth, with_distances, worst
from gradscope.errors import GradscopeError, first_line
from gradscope.options import AnalysisOptions
from gradscope.probe import Probe
from gradscope.progress import note
from gradscope.report import DepthLayer, DepthStack, Fix, FixEffect, FixId, RecurrentCore
from gradscope.whatif.apply import NotApplied
from gradscope.whatif.depth import OVER_DEPTH
from gradscope.whatif.recurrent import OVER_TIME

__all__ = [
    "NOT_MEASURABLE",
    "NotApplied",
    "Remeasure",
    "fixed_copy",
    "measure_fixes",
    "on_model",
    "on_parts",
]

#: Why a fix has no measured effect, where that is its nature.
NOT_MEASURABLE = {
    FixId.CLIP_GRAD_NORM: (
        "clipping bounds the updates of training and changes no Jacobian at these weights: "
        "nothing to measure before training"
    ),
    FixId.RECEPTIVE_FIELD: (
        "a wider receptive field is a new architecture, trained from its own start: nothing "
        "to measure at these weights"
    ),
    FixId.STABLE_FORMULATION: "a change to the model's code, which gradscope does not rewrite",
    FixId.ADD_EPSILON: "a change to the model's code, which gradscope does not rewrite",
    FixId.LOWER_LEARNING_RATE: "a change to training: nothing to measure at these weights",
    FixId.RESTORE_WEIGHTS: "other weights: measure that checkpoint with gradscope analyze",
    FixId.USE_BFLOAT16: (
        "a change to training; --dtype bfloat16 traces this checkpoint's pass in bfloat16"
    ),
    FixId.LOSS_SCALING: "a change to training: it scales the loss, not these weights",
}
#: A fix helps when a number it is judged by improves by more than this factor.
MIN_GAIN = 1.01


@dataclass
class Remeasure:
    """What fixes are applied to (a copy is taken of ``model``) and how a fixed copy is
    measured again: its cores, and its stack with the blocks (None with no stack)."""

    model: nn.Module
    cores: Callable[[nn.Module], list[RecurrentCore]]
    stack: Callable[[nn.Module], tuple[DepthStack, list[DepthLayer]] | None]
    steps: int
    probe: Probe | None = None


def on_model(model: nn.Module, probe: Probe, options: AnalysisOptions) -> Remeasure:
    """A whole model, measured again on ``probe`` with ``options``."""
    from gradscope.depth.measure import measure_depth
    from gradscope.recurrent.measure import measure_recurrent

    def cores(fixed: nn.Module) -> list[RecurrentCore]:
        with torch.enable_grad():
            return measure_recurrent(fixed, probe, options).cores

    def stack(fixed: nn.Module) -> tuple[DepthStack, list[DepthLayer]] | None:
        with torch.enable_grad():
            depth = measure_depth(fixed, probe, options, over_time=True)
        return (depth.stack, depth.layers) if depth.stack is not None else None

    return Remeasure(model, cores, stack, probe.steps, probe)


def on_parts(parts: list, options: AnalysisOptions, device: torch.device, steps: int) -> Remeasure:
    """Recurrent parts rebuilt from weights, held at their paths in one module, each measured
    again on its own as the parts view does."""
    from gradscope.recurrent.parts import hold, measure_parts

    if len(parts) == 1 and not parts[0].name:
        holder = parts[0].module
    else:
        holder = nn.Module()
        for part in parts:
            hold(holder, part.name, part.module)

    def cores(fixed: nn.Module) -> list[RecurrentCore]:
        moved = [dataclasses.replace(p, module=fixed.get_submodule(p.name)) for p in parts]
        return measure_parts(moved, options, device).cores

    return Remeasure(holder, cores, lambda fixed: None, steps)


def fixed_copy(
    model: nn.Module,
    fix_id: str,
    cores: list[RecurrentCore],
    stack: tuple[DepthStack, list[DepthLayer]] | None,
    options: AnalysisOptions,
    probe: Probe | None = None,
) -> tuple[nn.Module, str]:
    """A copy of ``model`` with ``fix_id`` applied for ``cores`` (over time) and ``stack``
    (over depth), and what was changed; :class:`NotApplied` says why it cannot be."""
    if fix_id in NOT_MEASURABLE:
        raise NotApplied(NOT_MEASURABLE[FixId(fix_id)])
    over_time = OVER_TIME.get(FixId(fix_id)) if cores else None
    over_depth = OVER_DEPTH.get(FixId(fix_id)) if stack is not None else None
    if over_time is None and over_depth is None:
        raise NotApplied("gradscope cannot apply this fix to a copy of the model")
    fixed, changes = copy.deepcopy(model), []
    if over_time is not None:
        changes.append(over_time(fixed, cores, options.epsilon, options.seed))
    if over_depth is not None and stack is not None:
        if probe is None:
            raise NotApplied("no probe to run the stack on")
        fixed, change = over_depth(fixed, *stack, options.seed, probe)
        changes.append(change)
    return fixed, "; ".join(changes)


def _gain(effect: FixEffect) -> float | None:
    """How many times better a number is after the fix: the horizon's ratio (infinite when
    nothing decays any more), or 10^(decades regained) of a stack; None for lambda_1 (read
    through the horizon) and where there is nothing to compare."""
    before, after = effect.before, effect.after
    if effect.metric == "memory_horizon":
        if before is None:  # nothing decayed before
            return None
        return math.inf if after is None else after / before
    if effect.metric == "decades" and before is not None and after is not None:
        if math.isnan(before) or math.isnan(after) or math.isinf(after):
            return None
        return math.inf if math.isinf(before) else 10 ** (abs(before) - abs(after))
    return None


def _core_effect(
    before: list[RecurrentCore], after: list[RecurrentCore]
) -> tuple[list[FixEffect], list[str]]:
    fixed = {core.key: core for core in after}
    effect, statuses = [], []
    for core in {core.key: core for core in before}.values():
        found = fixed.get(core.key)
        if found is None:
            continue
        effect += [
            FixEffect(core.label, "memory_horizon", core.memory_horizon, found.memory_horizon),
            FixEffect(core.label, "lambda_1", core.top_exponent, found.top_exponent),
        ]
        statuses.append(found.status)
    return effect, statuses


def _involved(fix: Fix, diagnosis: Diagnosis) -> tuple[list[RecurrentCore], bool]:
    """The cores whose findings call for ``fix``, and whether the stack's does."""
    by_key = {core.key: core for core in diagnosis.cores}
    calling = [f for f in diagnosis.findings if fix.id in f.fixes and f.evidence is not None]
    cores = [
        by_key[f.evidence.key]
        for f in calling
        if f.evidence is not None and f.evidence.part == "core" and f.evidence.key in by_key
    ]
    on_stack = any(f.evidence is not None and f.evidence.part == "stack" for f in calling)
    return cores, on_stack and diagnosis.stack is not None


def _measured(fix: Fix, diagnosis: Diagnosis, subject: Remeasure, options: AnalysisOptions) -> Fix:
    """``fix`` with its effect on the parts it is for, or why it was not measured."""
    if fix.id in NOT_MEASURABLE:
        return dataclasses.replace(fix, measured=NOT_MEASURABLE[FixId(fix.id)])
    cores, on_stack = _involved(fix, diagnosis)
    if not cores and not on_stack:
        return fix
    stack = (diagnosis.stack, diagnosis.layers) if on_stack and diagnosis.stack else None
    change = "the fix"
    note(f"measuring the fix {fix.id} on a copy of the model")
    try:
        fixed, change = fixed_copy(subject.model, fix.id, cores, stack, options, subject.probe)
        cores_after = subject.cores(fixed) if cores else []
        stack_after = subject.stack(fixed) if stack else None
    except NotApplied as reason:
        return dataclasses.replace(fix, measured=f"not measured: {reason}")
    except GradscopeError as error:  # what failed, without advice for another run
        return dataclasses.replace(fix, measured=f"not measured: {str(error).split('; ')[0]}")
    except Exception as error:  # the model's own code, on the fixed copy
        return dataclasses.replace(
            fix,
            measured=f"not measured: the model with {change} does not run "
            f"({type(error).__name__}: {first_line(error)})",
        )
    judged = assess_cores(
        with_distances(cores_after, options.distance, subject.steps), options.epsilon
    )
    effect, statuses = _core_effect(cores, judged)
    if stack is not None and stack_after is not None:
        after = assess_depth(stack_after[0], stack_after[1], options.epsilon)
        effect.append(FixEffect("depth", "decades", stack[0].decades, after.decades))
        statuses.append(after.status)
    gains = [g for g in map(_gain, effect) if g is not None]
    return dataclasses.replace(
        fix,
        effect=effect,
        status_after=worst(statuses) if statuses else None,
        measured=change,
        helps=max(gains) > MIN_GAIN if gains else None,
    )


def _benefit_rank(fix: Fix) -> tuple:
    """Fixes measured to help first (those that make every part healthy, then the largest
    gain first); then those not measured; then those measured not to help (listed, as
    tried)."""
    if fix.helps is None:
        return (1,)
    if not fix.helps:
        return (2,)
    best = max(g for g in map(_gain, fix.effect) if g is not None)
    return (0, fix.status_after != "healthy", -best)


def measure_fixes(
    fixes: list[Fix], diagnosis: Diagnosis, subject: Remeasure, options: AnalysisOptions
) -> list[Fix]:
    """Each fix with its effect measured on a copy of ``subject`` where gradscope can apply
    it, in order of measured benefit; ``options`` as requested (distance, epsilon, seed)."""
    return sorted((_measured(fix, diagnosis, subject, options) for fix in fixes), key=_benefit_rank)
