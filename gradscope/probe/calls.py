"""What each module of a model reads and gives on a run, call by call, and what that shows
of how the model calls a recurrent cell: which tensors are its state."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gradscope.probe.structure import Path, path_text, pick, tensor_leaves


@dataclass(frozen=True)
class ModuleCall:
    """One call of a module: the tensors of its arguments (paths ``(0, i, ...)`` positional,
    ``(1, name, ...)`` keyword) and of what it returned, each with its path."""

    arguments: list[tuple[Path, Tensor]]
    results: list[tuple[Path, Tensor]]

    @property
    def reads(self) -> list[Tensor]:
        """The tensors it read."""
        return [t for _, t in self.arguments]

    @property
    def gives(self) -> list[Tensor]:
        """The tensors it gave back."""
        return [t for _, t in self.results]


CallLog = dict[str, list[ModuleCall]]


@contextmanager
def every_call(model: nn.Module) -> Iterator[CallLog]:
    """Record the tensors every module of ``model`` reads and gives, call by call.

    Each module's ``forward`` is wrapped on the instance while inside, so that a module called
    as ``module.forward(...)`` (which hooks never see) is recorded as well as ``module(...)``;
    TorchScript modules, whose calls from compiled code never reach Python, are left alone.
    """
    log: CallLog = defaultdict(list)
    wrapped: list[tuple[nn.Module, object]] = []
    try:
        for name, module in model.named_modules():
            if isinstance(module, torch.jit.ScriptModule):
                continue
            wrapped.append((module, module.__dict__.get("forward")))
            module.__dict__["forward"] = _recording(module.forward, log[name])
        yield log
    finally:
        for module, own in wrapped:
            if own is None:
                module.__dict__.pop("forward", None)
            else:
                module.__dict__["forward"] = own


def _recording(forward, calls: list[ModuleCall]):
    def recorded(*args, **kwargs):
        result = forward(*args, **kwargs)
        calls.append(ModuleCall(tensor_leaves([list(args), kwargs]), tensor_leaves(result)))
        return result

    return recorded


#: Argument names that hold a cell's state when nothing fed back says otherwise.
STATE_NAMES = ("hx", "h", "state", "hidden", "states", "h_prev", "hidden_state")


@dataclass(frozen=True)
class CellCall:
    """Where a cell's state goes in and comes out.

    ``inputs`` are the paths of the state's tensors in the call, ``(0, i, ...)`` for the i-th
    positional argument and ``(1, name, ...)`` for a keyword; ``outputs`` the paths of the next
    state's tensors in what the cell returns, in the same order (``()``: all of it). Without
    ``inputs``, the state is the argument :data:`STATE_NAMES` names, else the second one.
    """

    inputs: tuple[Path, ...] = ()
    outputs: tuple[Path, ...] = ()
    observed: bool = False

    def describe(self) -> str:
        """Where the state goes in and comes out, in words."""
        slots = ", ".join(dict.fromkeys(argument_text(path) for path in self.inputs))
        back = ", ".join(f"output{path_text(path)}" for path in self.outputs)
        how = "fed back from" if self.observed else "assumed, the cell returning"
        return f"{slots} ({how} {back})"


def argument_text(path: Path) -> str:
    """``argument 1`` or ``keyword h``: the argument a path in a call starts in."""
    return f"argument {path[1]}" if path[0] == 0 else f"keyword {path[1]}"


def observed_call(calls: Sequence[ModuleCall]) -> CellCall | None:
    """The :class:`CellCall` that consecutive calls of a module show: the tensors of each call
    that the call before returned. None when a call reads nothing the one before returned,
    or calls disagree."""
    found: CellCall | None = None
    for previous, current_call in itertools.pairwise(calls):
        before, after = previous.results, current_call.arguments
        given: dict[int, Path] = {}
        for path, t in before:
            given.setdefault(id(t), path)
        fed = [(path, given[id(t)]) for path, t in after if id(t) in given]
        if not fed:
            return None
        slot = fed[0][0][:2]
        fed = [(inside, outside) for inside, outside in fed if inside[:2] == slot]
        current = CellCall(tuple(p for p, _ in fed), tuple(p for _, p in fed), observed=True)
        if found is not None and found != current:
            return None
        found = current
    return found


def default_call(structure: list, output: object) -> CellCall:
    """How a cell is called when no call shows it: its state is the argument named as states
    are (:data:`STATE_NAMES`), else the only keyword beside one positional argument, else the
    second positional argument; the next state is everything it returns, or its last tensors
    when it returns more, shaped as the state (an ``(output, state)`` pair)."""
    args, kwargs = structure
    named = next((name for name in STATE_NAMES if name in kwargs), None)
    if named is None and len(kwargs) == 1 and len(args) == 1:
        named = next(iter(kwargs))
    slot: Path = (0, 1) if named is None else (1, named)
    returned = tensor_leaves(output)
    outputs = tuple(path for path, _ in returned)
    try:
        given = pick(structure, slot)
    except (KeyError, IndexError, TypeError):
        given = None
    if given is None:
        return CellCall(tuple((*slot, *path) for path in outputs), outputs)
    state = tensor_leaves(given)
    last = returned[len(returned) - len(state) :]
    if len(returned) > len(state) and [t.shape for _, t in last] == [t.shape for _, t in state]:
        outputs = tuple(path for path, _ in last)  # (output, state): the state comes last
    return CellCall(tuple((*slot, *path) for path, _ in state), outputs)
