"""Custom recurrent cells: modules the model calls once per step with its state.

How the model calls a cell is a :class:`CellCall`: which tensors of the call are the state (the
ones the call before gave back) and where the next state lies in what the cell returns. Every
other tensor of the call (the step's input, elapsed times, masks, a context vector) is held as
the model passed it at that step: together they are the step's drive. The state may be a
tensor, a tuple/list or a dict of tensors; gradscope lays it out as one flat row per batch
element (``cat(h, c)``) and steps it through the module's own forward with its parameters
detached, so that a custom cell gets the same Jacobians and Lyapunov exponents as a built-in one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from gradscope.errors import GradscopeError
from gradscope.probe.calls import CellCall, argument_text
from gradscope.probe.structure import Path, path_text, pick, place
from gradscope.report import CellState

StepFunction = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class StateLayout:
    """How a cell's state tensors lie in one flat row.

    ``shapes`` are the tensors' shapes without the batch dimension; an unbatched state (every
    tensor 1-D) has no batch dimension at all.
    """

    shapes: tuple[torch.Size, ...]
    batched: bool

    @classmethod
    def of(cls, tensors: list[object], cell: str, what: str) -> StateLayout:
        """The layout of the state ``tensors``; refuse anything but float tensors that share
        a batch size."""
        if not tensors or not all(isinstance(t, Tensor) and t.is_floating_point() for t in tensors):
            kinds = ", ".join(_describe(t) for t in tensors) or "nothing"
            raise GradscopeError(
                f"--cell {cell}: its {what} is {kinds}, not a state; a cell must return its "
                "next state, a float tensor or a tuple/list/dict of them"
            )
        batched = any(t.dim() != 1 for t in tensors)
        if any(t.dim() == 0 for t in tensors) or (
            batched and len({t.shape[0] for t in tensors}) != 1
        ):
            shapes = ", ".join(str(tuple(t.shape)) for t in tensors)
            raise GradscopeError(
                f"--cell {cell}: its {what} holds tensors shaped {shapes}; each must be "
                "(batch, ...) with one batch size, or all unbatched (size,)"
            )
        shapes = tuple(t.shape[1:] if batched else t.shape for t in tensors)
        return cls(shapes, batched)

    @property
    def size(self) -> int:
        """Number of entries in one flat row: the state size n."""
        return sum(math.prod(shape) for shape in self.shapes)

    def flatten(self, tensors: Sequence[Tensor]) -> Tensor:
        """The state as one (B, n) tensor, or (n,) when unbatched."""
        lead = 1 if self.batched else 0
        return torch.cat([t.reshape(*t.shape[:lead], -1) for t in tensors], dim=-1)

    def unflatten(self, flat: Tensor) -> list[Tensor]:
        """Views of a flat (..., n) tensor, one per state tensor."""
        sizes = [math.prod(shape) for shape in self.shapes]
        lead = flat.shape[:-1]
        return [
            part.reshape(*lead, *shape)
            for part, shape in zip(flat.split(sizes, dim=-1), self.shapes, strict=True)
        ]

    def words(self) -> str:
        """``2 tensors, 64 values``."""
        count = len(self.shapes)
        return f"{count} tensor{'s' if count != 1 else ''}, {self.size} values"


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor"
    return "None" if value is None else f"a {type(value).__name__}"


@dataclass(frozen=True)
class HeldTensor:
    """A tensor of the call held per step: ``per_row`` when it has the state's batch first
    (each batch element its own row), else whole in every row."""

    path: Path
    shape: torch.Size
    dtype: torch.dtype
    per_row: bool

    @property
    def width(self) -> int:
        """Entries it takes in one drive row."""
        return math.prod(self.shape[1:] if self.per_row else self.shape)


@dataclass(frozen=True)
class DriveLayout:
    """The tensors held per step, laid out in one flat drive row per batch element."""

    held: tuple[HeldTensor, ...]

    @classmethod
    def of(cls, tensors: list[tuple[Path, Tensor]], batch: int | None) -> DriveLayout:
        """The layout of ``tensors``; with a ``batch``, those that start with it are per row."""
        return cls(
            tuple(
                HeldTensor(
                    path,
                    t.shape,
                    t.dtype,
                    batch is not None and t.dim() > 0 and t.shape[0] == batch,
                )
                for path, t in tensors
            )
        )

    @property
    def size(self) -> int:
        """Entries in one drive row: G."""
        return sum(held.width for held in self.held)

    @property
    def all_per_row(self) -> bool:
        """Whether every held tensor is per row: rows can then go through one batched call."""
        return all(held.per_row for held in self.held)

    def flatten(self, tensors: Sequence[Tensor], batch: int, like: Tensor) -> Tensor:
        """The held tensors as (batch, G) rows of ``like``'s dtype (shared ones repeated)."""
        rows = [
            t.reshape(batch, -1) if held.per_row else t.reshape(1, -1).expand(batch, -1)
            for held, t in zip(self.held, tensors, strict=True)
        ]
        return torch.cat(rows, dim=-1).to(like.dtype) if rows else like.new_zeros(batch, 0)

    def unflatten(self, rows: Tensor, batched: bool) -> dict[Path, Tensor]:
        """The held tensors from drive ``rows`` (M, G), or from one row (G,): per-row tensors
        get the rows as their batch (a batch of one for a single row when ``batched``),
        shared ones their own shape, in their own dtype."""
        parts = rows.split([held.width for held in self.held], dim=-1)
        found = {}
        for held, part in zip(self.held, parts, strict=True):
            if held.per_row and rows.dim() == 2:
                shape = (len(rows), *held.shape[1:])
            elif held.per_row:
                shape = (1, *held.shape[1:]) if batched else held.shape[1:]
            else:
                shape = held.shape
            found[held.path] = part.reshape(shape).to(held.dtype)
        return found

    def parts(self) -> list[str]:
        """``["argument 0 (8 per sequence)", "argument 2 (1 shared by the batch)"]``."""
        return [
            f"{argument_text(held.path)}{path_text(held.path[2:])} "
            f"({held.width} {'per sequence' if held.per_row else 'shared by the batch'})"
            for held in self.held
        ]


@dataclass(eq=False)
class CustomCell:
    """A custom cell as gradscope steps it: the module, how the model calls it, its state and
    drive layouts, and a call to rebuild (``template``: the call's arguments and keywords, a
    step with its state given when there is one)."""

    module: nn.Module
    call: CellCall
    layout: StateLayout
    drive: DriveLayout
    template: list = field(default_factory=list)

    @property
    def input_size(self) -> int:
        """Entries in one drive row: G."""
        return self.drive.size

    def state(self) -> CellState:
        """How the cell is called, as the report keeps it."""
        call = self.call
        return CellState(
            argument=", ".join(dict.fromkeys(argument_text(path) for path in call.inputs)),
            output=", ".join(f"output{path_text(path)}" for path in call.outputs),
            tensors=len(self.layout.shapes),
            size=self.layout.size,
            held=self.drive.parts(),
            observed=call.observed,
        )

    def describe(self, name: str) -> str:
        """What gradscope steps and holds, in words."""
        held = ", ".join(self.drive.parts()) or "nothing"
        return (
            f"cell {name}: state {self.layout.words()} in {self.call.describe()}; held at each "
            f"step as the model passed it: {held}"
        )

    def step_function(self) -> StepFunction:
        """``s' = step(s, u)``: the module's forward on flat states, parameters detached.

        ``s`` is (M, n) with ``u`` (M, G), or one state (n,) with its drive (G,). The module
        sees each tensor as the model gave it: with a batch dimension (of 1 for a single
        state), or unbatched; tensors shared by the batch are whole in every row, so rows
        are then stepped one by one under vmap.
        """
        module, layout, drive, call = self.module, self.layout, self.drive, self.call
        template = self.template
        tensors = {name: p.detach() for name, p in module.named_parameters()}
        tensors |= {name: b.detach() for name, b in module.named_buffers()}

        def forward(states: list[Tensor], held: dict[Path, Tensor]) -> Tensor:
            args, kwargs = place(template, {**dict(zip(call.inputs, states, strict=True)), **held})
            output = functional_call(module, tensors, tuple(args), kwargs)
            return layout.flatten([pick(output, path) for path in call.outputs])

        def rows(s: Tensor, u: Tensor) -> Tensor:
            return forward(layout.unflatten(s), drive.unflatten(u, layout.batched))

        def one(s: Tensor, u: Tensor) -> Tensor:
            if layout.batched:
                return forward(layout.unflatten(s[None]), drive.unflatten(u, True))[0]
            return forward(layout.unflatten(s), drive.unflatten(u, False))

        batched_rows = layout.batched and drive.all_per_row

        def step(s: Tensor, u: Tensor) -> Tensor:
            if s.dim() == 1:
                return one(s, u)
            return rows(s, u) if batched_rows else vmap(one)(s, u)

        return step


def state_tensors(value: object, paths: tuple[Path, ...]) -> list[object] | None:
    """The parts of ``value`` at ``paths``; None when one is missing."""
    try:
        return [pick(value, path) for path in paths]
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
