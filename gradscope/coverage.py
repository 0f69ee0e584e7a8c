"""Coverage: which modules with parameters the views measured, and why the others were not.

A module counts as measured when a view measured a part that holds it: a recurrent core over
time, a block of the depth stack, or a short feed-forward part beside recurrent cores (its
effect is in the gradients measured end to end). An embedding lookup that takes part counts too
(``lookup``): no gradient passes through it, and the gradient at its output is measured.
Whether a parameter took part in the model's output at all is read from the autograd graph of
the probe run, by data flow, not guessed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from torch import nn

from gradscope.report import Coverage, Unmeasured
from gradscope.taxonomy import is_kind, is_recurrent, is_within, type_name

#: Embedding lookups: no gradient flows through them to their ids, so the gradient at their
#: output (the stack's input side, which the views measure) is all there is to measure.
LOOKUPS = ("Embedding", "EmbeddingBag")

LEFT_OUT = "left out by --only"
NOT_USED = "did not take part in the output on the probe (not called, or its result unused)"
RECURRENT = "recurrent, not measured over time (name a custom cell with --cell)"
READ_DIRECTLY = "parameters the model's forward reads itself, outside any module it calls"
OUTSIDE_BLOCKS = "ran outside every block the depth view measured"
REBUILD_FAILED = "recurrent weights that could not be rebuilt as a module"
NOT_REBUILT = (
    "not recurrent: only recurrent parts are rebuilt from weights "
    "(pass --model package.module:Class to analyse the whole model)"
)


def _owners(model: nn.Module) -> dict[int, tuple[str, str, nn.Parameter]]:
    """Each parameter (by id, shared ones once): the module that holds it, its name there."""
    owners: dict[int, tuple[str, str, nn.Parameter]] = {}
    for path, module in model.named_modules():
        for name, parameter in module.named_parameters(recurse=False):
            owners.setdefault(id(parameter), (path, name, parameter))
    return owners


def _recurrent_paths(model: nn.Module) -> list[str]:
    return [path for path, module in model.named_modules() if is_recurrent(module)]


def module_coverage(
    model: nn.Module,
    views: Mapping[str, list[str]],
    used: set[int] | None,
    unit_paths: Iterable[str] = (),
    recurrences: Iterable[tuple[str, str]] = (),
    selects: Callable[[str], bool] | None = None,
) -> Coverage:
    """The coverage of ``model`` when each view measured the modules ``views`` names.

    ``used`` holds the ids of the parameters the probe's output depends on (None: unknown, all
    count as used); ``unit_paths`` the modules the depth view would treat as blocks, so that a
    parameter an expanded module reads itself is told apart from a module left out;
    ``recurrences`` are (module, what) of recurrences found by behaviour (``""``: the model's
    own forward): unless a recurrent view measured them, each is an unmeasured recurrence, and
    its module's parameters count as not measured, whatever view measured them over depth.
    ``selects``: whether ``--only`` left a module to measure (those it did not are left out,
    not unmeasured recurrences).
    """
    owners = _owners(model)
    views = {view: list(paths) for view, paths in views.items()}
    over_time = views.get("recurrent", [])
    hidden = [
        (path, what)
        for path, what in recurrences
        if not is_within(path, over_time) and (selects is None or selects(path))
    ]
    hidden_ids = {
        id(p) for path, _ in hidden if path for p in model.get_submodule(path).parameters()
    }
    covered = {
        id(parameter)
        for paths in views.values()
        for path in paths
        for parameter in model.get_submodule(path).parameters()
    } - hidden_ids
    lookups = [
        path
        for path, module in model.named_modules()
        if is_kind(module, LOOKUPS)
        and any(
            id(p) not in covered and (used is None or id(p) in used) for p in module.parameters()
        )
    ]
    if lookups:
        views["lookup"] = lookups
        covered |= {id(p) for path in lookups for p in model.get_submodule(path).parameters()}
    recurrent = _recurrent_paths(model)
    units = set(unit_paths)
    groups: dict[tuple[str, bool], dict[str, int]] = {}
    for key, (path, name, parameter) in owners.items():
        if key in covered or key in hidden_ids:
            continue
        taking_part = used is None or key in used
        is_recurrence = taking_part and is_within(path, recurrent)
        if selects is not None and not selects(path):
            reason, is_recurrence = LEFT_OUT, False
        elif is_recurrence:
            reason = RECURRENT
        elif not taking_part:
            reason = NOT_USED
        elif units and not is_within(path, units):
            reason = READ_DIRECTLY
        else:
            reason = OUTSIDE_BLOCKS
        if reason == READ_DIRECTLY:
            label = f"{path}.{name}" if path else name
        else:
            label = _label(model, path, recurrent)
        modules = groups.setdefault((reason, is_recurrence), {})
        modules[label] = modules.get(label, 0) + parameter.numel()
    total = sum(parameter.numel() for _, _, parameter in owners.values())
    not_measured = [_hidden(model, path, what) for path, what in hidden]
    not_measured += [
        Unmeasured(reason, list(modules), sum(modules.values()), recurrence)
        for (reason, recurrence), modules in groups.items()
    ]
    return _coverage(total, {k: v for k, v in views.items() if v}, not_measured)


def _hidden(model: nn.Module, path: str, what: str) -> Unmeasured:
    """An unmeasured recurrence found by behaviour, with what would measure it."""
    advice = (
        f"name it with --cell {path} to measure it over time"
        if path and "cell" in what
        else "a module that computes one step, named with --cell, is measured over time"
    )
    size = sum(p.numel() for p in model.get_submodule(path).parameters()) if path else 0
    return Unmeasured(f"{what}; {advice}", [_label(model, path, [])], size, recurrent=True)


def _label(model: nn.Module, path: str, recurrent: list[str]) -> str:
    """A module's name in a coverage list: its path and class; a recurrent module's whole."""
    holder = next((r for r in recurrent if is_within(path, [r])), path)
    return f"{holder or '(model)'} ({type_name(model.get_submodule(holder))})"


def _coverage(total: int, views: dict[str, list[str]], not_measured: list[Unmeasured]) -> Coverage:
    missing = sum(group.parameters for group in not_measured)
    measured = total - missing
    return Coverage(
        parameters=total,
        measured_parameters=measured,
        share=measured / total if total else 1.0,
        views=views,
        not_measured=not_measured,
        complete=not not_measured,
    )


def parts_coverage(
    parts: Mapping[str, int], total: int, not_analysed: Mapping[str, int]
) -> Coverage:
    """The coverage of a model rebuilt from weights: ``parts`` (name -> size) were measured;
    ``not_analysed`` (entry -> size) is what else the weights held: ``name: why`` for
    recurrent weights that could not be rebuilt, ``owner (N tensors): not recurrent`` else,
    ``owner: left out by --only`` for weights ``--only`` left unread."""
    suffix, left_out = ": not recurrent", ": " + LEFT_OUT
    failed = {
        e: n for e, n in not_analysed.items() if not e.endswith(suffix) and not e.endswith(left_out)
    }
    others = {e.removesuffix(suffix): n for e, n in not_analysed.items() if e.endswith(suffix)}
    unread = {e.removesuffix(left_out): n for e, n in not_analysed.items() if e.endswith(left_out)}
    not_measured = [
        Unmeasured(reason, list(entries), sum(entries.values()), recurrent)
        for reason, entries, recurrent in (
            (REBUILD_FAILED, failed, True),
            (NOT_REBUILT, others, False),
            (LEFT_OUT, unread, False),
        )
        if entries
    ]
    measured = sum(parts.values())
    return _coverage(
        max(total, measured + sum(not_analysed.values())),
        {"recurrent": list(parts)},
        not_measured,
    )
