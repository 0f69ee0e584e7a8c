"""Recurrences inside a model that no module of PyTorch's names: found by behaviour on the
probe run, so that coverage can say they were not measured over time.

- **Looped modules**: a module called at least three times in one forward, each call reading
  what the previous call gave (the state) and something new (the input of the step). A layer
  applied repeatedly to its own output with nothing new (weights shared over depth) is not one.
- **Scans**: a cumulative operation (``cumsum``, ``cumprod``, ``logcumsumexp``, ``cummax``,
  ``cummin``) over the time axis in the autograd graph, the way a parallel-scan recurrence
  (a minimal GRU, a state-space model) is computed; named by the block that holds it.
- **Loops over steps**: per-step results gathered into a sequence (``torch.stack``), or
  written one by one into a preallocated tensor (``out[t] = h``), where each step's result
  depends on the one before, as a hand-written recurrent layer computes with its own
  parameters and no cell module.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass

from torch import Tensor, nn

from gradscope.dataflow import walk, within_reach
from gradscope.probe.calls import CallLog, ModuleCall, observed_call
from gradscope.taxonomy import is_builtin_recurrent, is_within

#: A module called fewer times than this is no loop to speak of.
MIN_LOOP_CALLS = 3
#: Autograd nodes of the cumulative operations a parallel scan is computed with.
SCAN_NODES = ("Cumsum", "Cumprod", "Logcumsumexp", "Cummax", "Cummin")
#: Autograd nodes that gather per-step results into a sequence.
GATHER_NODES = ("Stack", "Cat")
#: How many operations back a loop's state is looked for.
CHAIN_SEARCH = 64


@dataclass(frozen=True)
class Recurrence:
    """A recurrence found by behaviour: the module path (``""`` for the model's own forward)
    and what it does, in words."""

    module: str
    what: str


def _loops(calls: list[ModuleCall]) -> bool:
    """At least MIN_LOOP_CALLS calls, every one after the first reading an output of the one
    before and a tensor the one before did not read (the step's input)."""
    if len(calls) < MIN_LOOP_CALLS:
        return False
    for before, after in itertools.pairwise(calls):
        fed = {id(t) for t in before.gives}
        seen = {id(t) for t in before.reads} | fed
        if not (
            any(id(t) in fed for t in after.reads) and any(id(t) not in seen for t in after.reads)
        ):
            return False
    return True


def looped_modules(log: CallLog) -> list[Recurrence]:
    """The modules called as a recurrent cell (:func:`_loops`)."""
    return [
        Recurrence(
            name,
            f"called {len(calls)} times, each call reading the state the call before gave: a "
            "recurrent cell",
        )
        for name, calls in log.items()
        if _loops(calls)
    ]


def steppable_cells(model: nn.Module, log: CallLog) -> list[tuple[str, int]]:
    """The looped modules gradscope can step as a cell (every call after the first reading,
    in one argument, state the call before returned), outermost first, with how often each
    was called; PyTorch's own recurrent modules and what lies inside them, or inside another
    cell, are left out."""
    builtin = [name for name, module in model.named_modules() if is_builtin_recurrent(module)]
    found: list[tuple[str, int]] = []
    for name, calls in log.items():
        if not name or not _loops(calls) or is_within(name, builtin):
            continue
        if observed_call(calls) is None:
            continue
        if not is_within(name, [cell for cell, _ in found]):
            found.append((name, len(calls)))
    return found


def _recurrent_nodes(
    starts: list[object], stops: set[int], time: tuple[int, int, int]
) -> dict[int, str]:
    """The nodes from ``starts`` back to ``stops`` (ids) that compute a recurrence over
    the time axis (``time``: axis, steps, rank of the probe): cumulative operations over it,
    and per-step results gathered into a sequence (``torch.stack``/``torch.cat`` of ``steps``
    parts) where each part depends on the one before (a loop over steps). id -> the
    operation, in words."""
    found = {}
    for node in walk(starts, stops):
        name = node.name()
        if name.startswith(SCAN_NODES) and _over_time(node, time):
            found[id(node)] = name.removesuffix("Backward0").lower()
        elif (name.startswith(GATHER_NODES) and _chained_parts(node, time[1])) or (
            name.endswith("CopySlices") and _chained_writes(node, time[1])
        ):
            found[id(node)] = "a loop over steps"
    return found


def _chained_writes(node: object, steps: int) -> bool:
    """Whether a chain of in-place writes into slices (``out[t] = h``, a buffer filled step by
    step) holds ``steps`` (or one fewer) values, the last of which depends on the one before:
    the states of a loop written into a preallocated tensor. Only the chain's last write is
    looked at."""
    chain = [node]
    while len(chain) <= steps:
        before = chain[-1].next_functions[0][0] if chain[-1].next_functions else None
        if before is None or not before.name().endswith("CopySlices"):
            break
        chain.append(before)
    if len(chain) < max(MIN_LOOP_CALLS, steps - 1) or len(chain) > steps:
        return False
    values = [write.next_functions[-1][0] for write in chain[:2]]
    return values[1] is not None and within_reach(values[0], {id(values[1])}, CHAIN_SEARCH)


def _chained_parts(node: object, steps: int) -> bool:
    """Whether a stack or cat gathers ``steps`` (or one fewer) parts, the last of which
    depends on the one before it within a few operations: the states of a loop."""
    parts = [child for child, _ in node.next_functions]
    if len(parts) < max(MIN_LOOP_CALLS, steps - 1) or len(parts) > steps:
        return False
    before = parts[-2]
    return before is not None and within_reach(parts[-1], {id(before)}, CHAIN_SEARCH)


def _over_time(node: object, time: tuple[int, int, int]) -> bool:
    """Whether a cumulative node scans the time axis: ``time`` is (axis, steps, rank) of the
    probe; a tensor of the probe's rank must be scanned on that axis, any other along an
    axis as long as the probe. Autograd says the axis and shape, where it keeps them (a
    negative axis as an unsigned number)."""
    try:
        shape = list(node._input_metadata[0].shape)  # type: ignore[attr-defined]
        dim = int(node._saved_dim)  # type: ignore[attr-defined]
    except Exception:
        return False
    if dim >= 2**63:
        dim -= 2**64
    if not -len(shape) <= dim < len(shape):
        return False
    dim %= len(shape)
    axis, steps, rank = time
    return shape[dim] == steps and (len(shape) != rank or dim == axis)


def region(name: str, gives: list[Tensor], reads: list[Tensor]) -> tuple[str, list, set[int]]:
    """The part of the graph a module computes: from what it gave back to what it read."""
    return (
        name,
        [t.grad_fn for t in gives if t.grad_fn is not None],
        {id(t.grad_fn) for t in reads if t.grad_fn is not None},
    )


def scans(
    output: Tensor | None, regions: list[tuple[str, list, set[int]]], time: tuple[int, int, int]
) -> list[Recurrence]:
    """Recurrences over the time axis (``time``: axis, steps, rank of the probe) in the graph
    of ``output`` (scans, loops
    over steps, see :func:`_recurrent_nodes`), named by the first of ``regions`` (module path,
    :func:`region`) that holds them, else by the model's own forward (``""``)."""
    if output is None or output.grad_fn is None:
        return []
    operations: dict[str, list[str]] = defaultdict(list)  # module -> operations, in order
    placed: set[int] = set()
    for module, starts, stops in [*regions, ("", [output.grad_fn], set())]:
        for key, operation in _recurrent_nodes(starts, stops, time).items():
            if key not in placed:
                placed.add(key)
                operations[module].append(operation)
    return [_recurrence(module, names) for module, names in operations.items()]


def innermost(found: list[Recurrence]) -> list[Recurrence]:
    """The recurrences without one inside them: a block that loops over steps because a cell
    inside it is looped is the cell's recurrence, said once, at the cell."""

    return [
        r
        for r in found
        if not any(o.module != r.module and is_within(o.module, [r.module]) for o in found)
    ]


def _recurrence(module: str, operations: list[str]) -> Recurrence:
    scanned = list(dict.fromkeys(op for op in operations if op != "a loop over steps"))
    if scanned:
        what = f"computes a scan over the time axis ({', '.join(scanned)}): a recurrence in "
        return Recurrence(module, what + "parallel form")
    return Recurrence(
        module, "loops over time steps, each step reading the one before: a recurrence"
    )
