"""The blocks of a deep stack, in the order the model runs them, and what each saw on the probe.

Granularity ``blocks`` (the default) expands the root and every container (``nn.Sequential``,
``nn.ModuleList``, ``nn.ModuleDict``), and every module that holds a stack of layers in one
(``nn.TransformerEncoder``), and keeps every other module whole, so a ResNet's
``BasicBlock`` is one block; an activation, normalisation or dropout that reads the output of
the module just before it joins that module's block (``Linear`` + ``Sigmoid``). ``leaves``
expands everything down to modules without children; an integer N expands every module down to
N levels below the root. Recurrent modules are left out: they are analysed over time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from torch import Tensor, nn

from gradscope import taxonomy
from gradscope.taxonomy import classes, is_builtin_recurrent


@dataclass
class Call:
    """One call of a unit during the probe run: its module, input and output.

    ``value`` is a copy of the input as it was at the call, safe from later in-place changes.
    """

    name: str
    module: nn.Module
    input: Tensor
    output: Tensor
    value: Tensor


@dataclass
class Block:
    """Consecutive calls that form one block: the first reads its input, the last gives its
    output; applying their modules in turn is the block's function."""

    calls: list[Call]
    parent: str | None = None
    indices: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The block's module paths, joined: ``net.0+net.1``."""
        names = list(dict.fromkeys(call.name for call in self.calls))
        return "+".join(name or "(model)" for name in names)

    @property
    def type(self) -> str:
        """The block's module classes, joined: ``Linear+Sigmoid``."""
        return "+".join(type(call.module).__name__ for call in self.calls)

    @property
    def input(self) -> Tensor:
        """What the block read."""
        return self.calls[0].input

    @property
    def value(self) -> Tensor:
        """A detached copy of what the block read."""
        return self.calls[0].value

    @property
    def output(self) -> Tensor:
        """What the block gave."""
        return self.calls[-1].output

    def function(self) -> Callable[[Tensor], Tensor]:
        """The block as a function of its input."""
        modules = [call.module for call in self.calls]

        def apply(x: Tensor) -> Tensor:
            x = x.clone()  # an in-place first module must not write into the input
            for module in modules:
                x = module(x)
            return x

        return apply

    def has_weights(self) -> bool:
        """Whether a weight matrix or kernel acts in the block (not only norms, activations)."""
        return any(
            isinstance(sub, classes(taxonomy.WEIGHTED))
            for call in self.calls
            for sub in call.module.modules()
        )

    def activation(self) -> Call | None:
        """The last activation call in the block, if any."""
        return next(
            (
                c
                for c in reversed(self.calls)
                if isinstance(c.module, classes(taxonomy.ACTIVATIONS))
            ),
            None,
        )


def units(model: nn.Module, granularity: str) -> list[tuple[str, nn.Module]]:
    """The modules whose calls are recorded, by module path."""
    limit = int(granularity) if granularity.isdigit() else None
    found: list[tuple[str, nn.Module]] = []

    def visit(name: str, module: nn.Module, level: int) -> None:
        if is_builtin_recurrent(module):
            return
        containers = classes(taxonomy.CONTAINERS)
        children = list(module.named_children())
        holds_stack = any(isinstance(child, containers) and len(child) > 1 for _, child in children)
        expand = bool(children) and (
            level == 0
            or isinstance(module, containers)
            or holds_stack
            or granularity == "leaves"
            or (limit is not None and level < limit)
        )
        if not expand:
            found.append((name, module))
            return
        for child_name, child in children:
            visit(f"{name}.{child_name}" if name else child_name, child, level + 1)

    visit("", model, 0)
    return found


@contextmanager
def recording(model: nn.Module, granularity: str) -> Iterator[list[Call]]:
    """Record every call of a unit that maps one tensor to one tensor, in execution order."""
    calls: list[Call] = []
    handles = []
    copies: dict[int, Tensor] = {}
    for name, module in units(model, granularity):

        def before(module: nn.Module, args: tuple) -> None:
            if len(args) == 1 and isinstance(args[0], Tensor) and args[0].is_floating_point():
                copies[id(module)] = args[0].detach().clone()  # before an in-place change

        def hook(module: nn.Module, args: tuple, output: object, name: str = name) -> None:
            value = copies.pop(id(module), None)
            if value is not None and isinstance(output, Tensor) and output.is_floating_point():
                calls.append(Call(name, module, args[0], output, value))

        handles.append(module.register_forward_pre_hook(before))
        handles.append(module.register_forward_hook(hook))
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def _parent_and_index(name: str) -> tuple[str, int | None]:
    parent, _, last = name.rpartition(".")
    return parent, int(last) if last.isdigit() else None


def blocks_of(calls: list[Call]) -> list[Block]:
    """Group calls into blocks: a follower that reads the previous call's output joins it."""
    blocks: list[Block] = []
    for call in calls:
        previous = blocks[-1] if blocks else None
        joins = (
            previous is not None
            and isinstance(call.module, classes(taxonomy.FOLLOWERS))
            and call.input is previous.output
        )
        if joins:
            previous.calls.append(call)
        else:
            blocks.append(Block([call]))
    for block in blocks:
        places = [_parent_and_index(call.name) for call in block.calls]
        parents = {parent for parent, _ in places}
        if len(parents) == 1 and all(index is not None for _, index in places):
            block.parent = parents.pop()
            block.indices = list(dict.fromkeys(index for _, index in places))
    return blocks
