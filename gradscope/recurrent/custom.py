"""Custom recurrent cells: modules whose forward maps ``(input, state)`` to the next state.

The state may be one tensor or a tuple/list of tensors (``(h, c)``). gradscope lays it out as one
flat row per batch element, ``cat(h, c)``, and steps it through the module's own forward with
its parameters detached, so that a custom cell gets the same Jacobians and Lyapunov exponents as
a built-in one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from gradscope.errors import GradscopeError

StepFunction = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class StateLayout:
    """How a cell's state (a tensor, or a tuple/list of them) lies in one flat row.

    ``shapes`` are the element shapes without the batch dimension; an unbatched state (every
    element 1-D) has no batch dimension at all.
    """

    container: type | None
    shapes: tuple[torch.Size, ...]
    batched: bool

    @classmethod
    def of(cls, state: object, cell: str, what: str) -> StateLayout:
        """The layout of ``state``; refuse anything but a tensor or a tuple/list of tensors."""
        tensors = [state] if isinstance(state, Tensor) else state
        if (
            not isinstance(tensors, (tuple, list))
            or not tensors
            or not all(isinstance(t, Tensor) and t.is_floating_point() for t in tensors)
        ):
            raise GradscopeError(
                f"--cell {cell}: its {what} is {_describe(state)}, not a state; a cell must map "
                "(input, state) to the next state, a float tensor or a tuple/list of them"
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
        container = None if isinstance(state, Tensor) else type(state)
        shapes = tuple(t.shape[1:] if batched else t.shape for t in tensors)
        return cls(container, shapes, batched)

    @property
    def size(self) -> int:
        """Number of entries in one flat row: the state size n."""
        return sum(math.prod(shape) for shape in self.shapes)

    def flatten(self, state: object) -> Tensor:
        """The state as one (B, n) tensor, or (n,) when unbatched."""
        tensors = [state] if self.container is None else state
        lead = 1 if self.batched else 0
        return torch.cat([t.reshape(*t.shape[:lead], -1) for t in tensors], dim=-1)

    def unflatten(self, flat: Tensor) -> object:
        """Views of a flat (..., n) tensor, shaped and packed like the state."""
        sizes = [math.prod(shape) for shape in self.shapes]
        lead = flat.shape[:-1]
        parts = [
            part.reshape(*lead, *shape)
            for part, shape in zip(flat.split(sizes, dim=-1), self.shapes, strict=True)
        ]
        if self.container is None:
            return parts[0]
        if self.container in (tuple, list):
            return self.container(parts)
        return self.container(*parts)  # a namedtuple


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor"
    if isinstance(value, (tuple, list)) and value:
        kinds = ", ".join(sorted({type(item).__name__ for item in value}))
        return f"a {type(value).__name__} of {kinds}"
    return f"a {type(value).__name__}"


@dataclass(frozen=True, eq=False)
class CustomCell:
    """A custom cell as gradscope steps it: the module, its state layout and its input shape.

    ``input_shape`` is the input's shape without the batch dimension; ``keyword`` names the
    state argument when the model passes it by keyword.
    """

    module: nn.Module
    layout: StateLayout
    input_shape: torch.Size
    keyword: str | None = None

    @property
    def input_size(self) -> int:
        """Entries in one input: F, the width of a flat drive."""
        return math.prod(self.input_shape)

    def step_function(self) -> StepFunction:
        """``s' = step(s, u)``: the module's forward on flat states, parameters detached.

        ``s`` is (M, n) with ``u`` (M, F), or one state (n,) with its input (F,); ``u`` is the
        cell's input flattened per batch element. The module sees its input as the model gave
        it: with a batch dimension (of 1 for a single state), or unbatched.
        """
        module, layout, shape, keyword = self.module, self.layout, self.input_shape, self.keyword
        tensors = {name: p.detach() for name, p in module.named_parameters()}
        tensors |= {name: b.detach() for name, b in module.named_buffers()}

        def call(x: Tensor, state: object) -> Tensor:
            args, kwargs = ((x,), {keyword: state}) if keyword else ((x, state), {})
            return layout.flatten(functional_call(module, tensors, args, kwargs))

        def rows(s: Tensor, u: Tensor) -> Tensor:
            if layout.batched:
                return call(u.reshape(len(u), *shape), layout.unflatten(s))
            return vmap(one)(s, u)

        def one(s: Tensor, u: Tensor) -> Tensor:
            if layout.batched:
                return rows(s[None], u[None])[0]
            return call(u.reshape(shape), layout.unflatten(s))

        def step(s: Tensor, u: Tensor) -> Tensor:
            return one(s, u) if s.dim() == 1 else rows(s, u)

        return step
