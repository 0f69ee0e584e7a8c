"""Recurrences inside a model that no module of PyTorch's names: found by behaviour on the
probe run, so that coverage can say they were not measured over time.

- **Looped modules**: a module called at least three times in one forward, each call reading
  what the previous call gave (the state) and something new (the input of the step). A layer
  applied repeatedly to its own output with nothing new (weights shared over depth) is not one.
- **Scans**: a cumulative operation (``cumsum``, ``cumprod``, ``logcumsumexp``, ``cummax``,
  ``cummin``) over the time axis in the autograd graph, the way a parallel-scan recurrence
  (a minimal GRU, a state-space model) is computed; named by the block that holds it.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from torch import Tensor, nn

from gradscope.depth.blocks import Block
from gradscope.probe.structure import tensor_leaves

#: A module called fewer times than this is no loop to speak of.
MIN_LOOP_CALLS = 3
#: Autograd nodes of the cumulative operations a parallel scan is computed with.
SCAN_NODES = ("Cumsum", "Cumprod", "Logcumsumexp", "Cummax", "Cummin")


@dataclass(frozen=True)
class Recurrence:
    """A recurrence found by behaviour: the module path (``""`` for the model's own forward)
    and what it does, in words."""

    module: str
    what: str


@contextmanager
def every_call(model: nn.Module) -> Iterator[dict[str, list[tuple[list[Tensor], list[Tensor]]]]]:
    """Record the tensors every module of ``model`` reads and gives, call by call."""
    log: dict[str, list[tuple[list[Tensor], list[Tensor]]]] = defaultdict(list)
    handles = []
    for name, module in model.named_modules():

        def after(
            module: nn.Module, args: tuple, kwargs: dict, result: object, name: str = name
        ) -> None:
            reads = [t for _, t in tensor_leaves([list(args), kwargs])]
            log[name].append((reads, [t for _, t in tensor_leaves(result)]))

        handles.append(module.register_forward_hook(after, with_kwargs=True))
    try:
        yield log
    finally:
        for handle in handles:
            handle.remove()


def looped_modules(log: dict[str, list[tuple[list[Tensor], list[Tensor]]]]) -> list[Recurrence]:
    """The modules called as a recurrent cell: at least MIN_LOOP_CALLS calls, every one after
    the first reading an output of the one before and a tensor the one before did not read."""
    found = []
    for name, calls in log.items():
        if len(calls) < MIN_LOOP_CALLS:
            continue
        stepped = 0
        for (read_before, gave_before), (reads, _) in itertools.pairwise(calls):
            fed = {id(t) for t in gave_before}
            before = {id(t) for t in read_before} | fed
            if any(id(t) in fed for t in reads) and any(id(t) not in before for t in reads):
                stepped += 1
        if stepped == len(calls) - 1:
            found.append(
                Recurrence(
                    name,
                    f"called {len(calls)} times, each call reading the state the call before "
                    "gave: a recurrent cell",
                )
            )
    return found


def _scans_in(node: object, stop: object) -> dict[int, tuple[str, int | None]]:
    """Every cumulative node from ``node`` back to ``stop``: id -> (operation, scanned size)."""
    found = {}
    seen: set[int] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        if current is None or current is stop or id(current) in seen:
            continue
        seen.add(id(current))
        name = current.name()
        if name.startswith(SCAN_NODES):
            found[id(current)] = (name.removesuffix("Backward0").lower(), _scanned_size(current))
        stack.extend(child for child, _ in current.next_functions)
    return found


def _scanned_size(node: object) -> int | None:
    """The length of the axis a cumulative node scans, where autograd says it."""
    try:
        return int(node._input_metadata[0].shape[node._saved_dim])  # type: ignore[attr-defined]
    except Exception:
        return None


def scans(output: Tensor | None, blocks: list[Block], steps: int) -> list[Recurrence]:
    """Cumulative operations over ``steps`` (the time axis) in the graph of ``output``, named
    by the block that holds them, else by the model's own forward (``""``)."""
    if output is None or output.grad_fn is None:
        return []
    operations: dict[str, list[str]] = defaultdict(list)  # module -> operations, in order
    placed: set[int] = set()
    places = [(b.calls[0].name, b.output.grad_fn, b.input.grad_fn) for b in blocks]
    for module, start, stop in [*places, ("", output.grad_fn, None)]:
        for key, (operation, size) in _scans_in(start, stop).items():
            if key not in placed and size in (None, steps):
                placed.add(key)
                operations[module].append(operation)
    return [
        Recurrence(
            module,
            f"computes a scan over the time axis ({', '.join(dict.fromkeys(names))}): a "
            "recurrence in parallel form",
        )
        for module, names in operations.items()
    ]
