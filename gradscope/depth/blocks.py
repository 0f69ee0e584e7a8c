"""The blocks of a deep stack, in the order the model runs them, and what each saw on the probe.

Granularity ``blocks`` (the default) expands the root and every container (``nn.Sequential``,
``nn.ModuleList``, ``nn.ModuleDict``), and every module that holds a stack of layers in one
(``nn.TransformerEncoder``, see :func:`is_stack`), and keeps every other module whole, so a ResNet's
``BasicBlock`` is one block; an activation, normalisation or dropout that reads the output of
the module just before it joins that module's block (``Linear`` + ``Sigmoid``). ``leaves``
expands everything down to modules without children; an integer N expands every module down to
N levels below the root. Recurrent modules are left out: they are analysed over time.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from gradscope import taxonomy
from gradscope.dataflow import depends_on
from gradscope.probe.structure import Path, path_text, pick, tensor_leaves
from gradscope.taxonomy import classes, is_builtin_recurrent


@dataclass
class Call:
    """One call of a unit during the probe run: its module, what it read and what it gave.

    A unit may take several arguments and return a structure of tensors: ``input`` is the
    stream it read (the tensor the data flow brings from the block before, see
    :func:`stream_argument`), ``value`` a copy of it as it was at the call (safe from later
    in-place changes), and ``output`` the stream it gave, at ``output_path`` among its
    floating-point ``outputs``;
    every other argument is held fixed, and every other floating-point output is a side
    output (a skip, a cache, attention weights): a branch, not the stream.
    """

    name: str
    module: nn.Module
    input: Tensor
    value: Tensor
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    outputs: list[tuple[Path, Tensor]] = field(default_factory=list)
    output_path: Path = ()

    @property
    def output(self) -> Tensor:
        """The stream the unit gave."""
        return next(t for path, t in self.outputs if path == self.output_path)

    @property
    def side_outputs(self) -> list[Path]:
        """Where the unit's other floating-point outputs sit in its result."""
        return [path for path, _ in self.outputs if path != self.output_path]

    def apply(self, x: Tensor) -> Tensor:
        """The unit again on ``x`` in place of its stream input, every other argument as it was;
        the stream of its output."""
        stream = self.input
        args = tuple(x if a is stream else _fixed(a) for a in self.args)
        kwargs = {k: x if a is stream else _fixed(a) for k, a in self.kwargs.items()}
        result = self.module(*args, **kwargs)
        return pick(result, self.output_path)  # type: ignore[return-value]


def _fixed(value: object) -> object:
    """An argument held fixed: a tensor detached from the probe's graph."""
    return value.detach() if isinstance(value, Tensor) else value


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

    @property
    def side_outputs(self) -> list[str]:
        """The block's side outputs (branches), as ``module[1]``."""
        return [f"{c.name or '(model)'}{path_text(p)}" for c in self.calls for p in c.side_outputs]

    def function(self) -> Callable[[Tensor], Tensor]:
        """The block as a function of its stream input."""
        calls = list(self.calls)

        def apply(x: Tensor) -> Tensor:
            x = x.clone()  # an in-place first module must not write into the input
            for call in calls:
                x = call.apply(x)
            return x

        return apply

    def has_weights(self) -> bool:
        """Whether a weight matrix or kernel acts in the block (not only norms, activations)."""
        return any(mixes_features(sub) for call in self.calls for sub in call.module.modules())

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


def is_stack(container: nn.Module) -> bool:
    """Whether a container holds a stack of layers: three or more with weights of their own
    (a deep ``Sequential``), or repeated composite blocks (``TransformerEncoder.layers``, or a
    ``ModuleList`` of one, which the model may call several times); a block's small MLP
    (``Linear, GELU, Linear``) is not one."""
    children = list(container.children())
    weighted = [c for c in children if next(c.parameters(recurse=False), None) is not None]
    # a list of composite blocks, however short: ALBERT's one shared layer group, run N times
    listed = len(children) > 1 or isinstance(container, nn.ModuleList)
    repeated = (
        bool(children)
        and listed
        and len({type(c) for c in children}) == 1
        and all(next(c.children(), None) is not None for c in children)
    )
    return len(weighted) >= 3 or repeated


def holds_a_stack(module: nn.Module, levels: int = 2) -> bool:
    """Whether a stack of layers (:func:`is_stack`) sits among the module's children, or
    theirs (``nn.Transformer`` holds an encoder that holds its layers)."""
    containers = classes(taxonomy.CONTAINERS)
    for child in module.children():
        if isinstance(child, containers) and is_stack(child):
            return True
        if levels > 1 and not isinstance(child, containers) and holds_a_stack(child, levels - 1):
            return True
    return False


def units(model: nn.Module, granularity: str) -> list[tuple[str, nn.Module]]:
    """The modules whose calls are recorded, by module path."""
    limit = int(granularity) if granularity.isdigit() else None
    found: list[tuple[str, nn.Module]] = []

    def visit(name: str, module: nn.Module, level: int) -> None:
        if is_builtin_recurrent(module):
            return
        containers = classes(taxonomy.CONTAINERS)
        children = list(module.named_children())
        holds_stack = holds_a_stack(module)
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
    kept: dict[int, tuple[str, nn.Module]] = {}
    for name, module in found:  # a module shared under two names is one unit, its first name
        kept.setdefault(id(module), (name, module))
    return list(kept.values())


def stream_argument(args: tuple, kwargs: dict, produced: dict[int, int]) -> Tensor | None:
    """The argument that carries the stream into a unit, by data flow.

    Among the floating-point tensors passed (positionally or by keyword): the one produced
    most recently by a recorded unit (or the model's own input); else the first that carries a
    gradient (a mask or a constant does not); else the first. None without any.
    """
    candidates = [a for a in (*args, *kwargs.values()) if _is_float(a)]
    if not candidates:
        return None
    flowing = [a for a in candidates if id(a) in produced]
    if flowing:
        return max(flowing, key=lambda a: produced[id(a)])
    return next((a for a in candidates if a.requires_grad), candidates[0])


def _is_float(value: object) -> bool:
    return isinstance(value, Tensor) and value.is_floating_point()


@contextmanager
def recording(model: nn.Module, granularity: str) -> Iterator[list[Call]]:
    """Record every call of a unit that reads and gives floating-point tensors, in order.

    Units may take any arguments and return any structure of tensors; the stream each reads is
    found by data flow (:func:`stream_argument`), the stream each gives when the calls are
    grouped into blocks (:func:`blocks_of`).
    """
    calls: list[Call] = []
    produced: dict[int, int] = {}  # id of a tensor a unit gave (or the model's input) -> order
    keep: list[Tensor] = []  # the tensors behind those ids stay alive while recording
    pending: dict[int, list[tuple[Tensor, Tensor]]] = {}

    def model_input(module: nn.Module, args: tuple, kwargs: dict) -> None:
        for tensor in (*args, *kwargs.values()):
            if _is_float(tensor) and id(tensor) not in produced:
                produced[id(tensor)] = -1
                keep.append(tensor)

    with ExitStack() as hooks:
        hooks.callback(model.register_forward_pre_hook(model_input, with_kwargs=True).remove)
        for name, module in units(model, granularity):

            def before(module: nn.Module, args: tuple, kwargs: dict) -> None:
                stream = stream_argument(args, kwargs, produced)
                if stream is not None:  # copied before an in-place change
                    pending.setdefault(id(module), []).append((stream, stream.detach().clone()))

            def after(
                module: nn.Module, args: tuple, kwargs: dict, result: object, name: str = name
            ) -> None:
                waiting = pending.get(id(module))
                if not waiting:
                    return
                stream, value = waiting.pop()
                outputs = [(path, t) for path, t in tensor_leaves(result) if t.is_floating_point()]
                if not outputs:
                    return
                calls.append(Call(name, module, stream, value, args, kwargs, outputs))
                for _, tensor in outputs:
                    produced[id(tensor)] = len(calls)
                    keep.append(tensor)

            hooks.callback(module.register_forward_pre_hook(before, with_kwargs=True).remove)
            hooks.callback(module.register_forward_hook(after, with_kwargs=True).remove)
        yield calls


def _parent_and_index(name: str) -> tuple[str, int | None]:
    parent, _, last = name.rpartition(".")
    return parent, int(last) if last.isdigit() else None


def choose_streams(calls: list[Call], final: object = None) -> None:
    """Set the stream each call gave, by data flow: the output a later call reads as its
    stream, or the model returns; else, among the outputs the model's output depends on (all,
    if none), the first shaped as the stream the call read; else the first of them."""
    readers = {id(call.input) for call in calls} | {id(t) for _, t in tensor_leaves(final)}
    returned = depends_on(t for _, t in tensor_leaves(final) if t.requires_grad)
    for call in calls:
        if len(call.outputs) == 1:
            call.output_path = call.outputs[0][0]
            continue
        read = [path for path, t in call.outputs if id(t) in readers]
        used = [path for path, t in call.outputs if returned(t)]
        shaped = [path for path in used or [p for p, _ in call.outputs] if _shape(call, path)]
        call.output_path = (read or shaped or used or [call.outputs[0][0]])[0]


def _shape(call: Call, path: Path) -> bool:
    """Whether the output at ``path`` is shaped as the stream the call read."""
    return next(t for p, t in call.outputs if p == path).shape == call.input.shape


#: A module called this often, never on its own last output, is applied per step, not stacked.
PARALLEL_CALLS = 3
#: How many operations back the next call's input is followed to the last call's output.
FEED_HOPS = 8


def feeds(before: Call, after: Call) -> bool:
    """Whether ``after`` reads what ``before`` gave, through at most a few operations that
    take nothing new: activations, norms, a residual add of ``before``'s own input
    (``x = x + layer(x)``), never a tensor from elsewhere (a step's input)."""
    node, target = after.input.grad_fn, before.output.grad_fn
    stream = before.input.grad_fn
    for _ in range(FEED_HOPS):
        if node is None:
            return False
        if node is target:
            return True
        others = [
            child
            for child, _ in node.next_functions
            if child is not None
            and child is not stream
            and hasattr(child, "next_functions")
            and not child.name().endswith("AccumulateGrad")
        ]
        if len(others) != 1:
            return False
        node = others[0]
    return False


def without_parallel_calls(calls: list[Call]) -> list[Call]:
    """The calls that form the stack. A module called at least PARALLEL_CALLS times whose
    calls do not feed each other (:func:`feeds`: a head applied at every decoder step, a
    dropout or a layer inside a loop over time) is applied per step: only its last call
    stays, and calls without weights that follow a dropped call go with it. A module applied
    to its own output again and again (weights shared over depth) keeps every call, and so
    does an activation shared by the blocks it follows (``self.act`` after each block)."""
    by_module: dict[int, list[Call]] = {}
    for call in calls:
        by_module.setdefault(id(call.module), []).append(call)
    parallel = set()
    for own in by_module.values():
        if len(own) >= PARALLEL_CALLS and not any(
            feeds(before, after) for before, after in itertools.pairwise(own)
        ):
            parallel |= {id(call) for call in own[:-1]}
    kept, kept_outputs, gone = [], set(), set()
    for call in calls:
        plain = next(call.module.parameters(), None) is None
        joins = plain and id(call.input) in kept_outputs
        if not joins and (id(call) in parallel or (plain and id(call.input) in gone)):
            gone.add(id(call.output))
        else:
            kept.append(call)
            kept_outputs.add(id(call.output))
    return kept


def blocks_of(calls: list[Call], final: object = None) -> list[Block]:
    """Group calls into blocks: a follower that reads the previous call's output joins it.

    ``final`` is what the model returned, which tells the stream of the last blocks."""
    choose_streams(calls, final)
    calls = without_parallel_calls(calls)
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


#: How many autograd nodes back from a block's output its skip may be added (an activation, an
#: in-place add, a scale, a drop-path between).
SHORTCUT_HOPS = 4
#: Autograd nodes of a scale between a shortcut and the add (``0.5 * shortcut(x)``).
SCALES = ("MulBackward", "DivBackward")


def mixes_features(module: nn.Module) -> bool:
    """Whether ``module`` is a weighted layer: a linear map, convolution or attention of
    PyTorch's, or any other module (a library's own linear layer, such as transformers'
    ``Conv1D``) whose own parameters hold a matrix or kernel, an embedding's table aside."""
    if isinstance(module, classes(taxonomy.WEIGHTED)):
        return True
    if isinstance(module, nn.Embedding | nn.EmbeddingBag):
        return False
    return any(p.dim() >= 2 for p in module.parameters(recurse=False))


def _weighted_layers(module: nn.Module) -> int:
    """How many weighted layers (linear maps, convolutions, attention) a module holds."""
    return sum(mixes_features(m) for m in module.modules())


def _adds(output: Tensor, addend: Tensor) -> bool:
    """Whether ``addend`` is added (a few nodes before) into what gives ``output``: an add node
    among the last SHORTCUT_HOPS nodes of ``output``'s graph takes it as an operand (see
    :func:`_operand`)."""
    target = addend.grad_fn
    if target is None or output.grad_fn is None:
        return False
    frontier, seen = [output.grad_fn], set()
    for _ in range(SHORTCUT_HOPS):
        following = []
        for node in frontier:
            if node is None or node in seen:
                continue
            seen.add(node)
            operands = [child for child, _ in node.next_functions if child is not None]
            if node.name().startswith("AddBackward") and _operand(operands, target):
                return True
            following += operands
        frontier = following
    return False


def _operand(operands: list, target: object) -> bool:
    """Whether ``target`` is one of an add's operands (or scaled, one node before), and another
    operand is computed too (a branch, not a constant)."""
    for operand in operands:
        inner = [child for child, _ in operand.next_functions if child is not None]
        scaled = operand.name().startswith(SCALES) and inner == [target]
        if operand is target or scaled:
            others = [other for other in operands if other is not operand]
            return any(not other.name().endswith("AccumulateGrad") for other in others)
    return False


def find_shortcut(block: Block) -> str | None:
    """The projection shortcut of a block that changes shape, by module path, if it has one.

    A ResNet's downsampling block, ``act(branch(x) + downsample(x))``: the block's first module
    has a child that (1) is a short path, one weighted layer (a 1x1 convolution, a linear map,
    with a norm or pooling), where the rest of the module holds more (the branch is the deeper
    path: two one-layer convolutions side by side are two branches, not a skip), (2) is called
    once, on the very input the block reads, and (3) gives a tensor that is added into the
    block's output (:func:`_adds`). The block's module is run once more on its input to see
    this; a plain block that changes shape has no such child.
    """
    if block.value.shape == block.output.shape:
        return None
    call = block.calls[0]
    deeper = _weighted_layers(call.module) - 1 > 1  # the branch is deeper than a shortcut
    children = [
        (name, child)
        for name, child in call.module.named_children()
        if deeper and _weighted_layers(child) == 1
    ]
    if not children:
        return None
    seen: dict[str, list[Tensor | None]] = {name: [] for name, _ in children}
    x = block.value.detach().clone().requires_grad_(True)
    stream = x.clone()
    with ExitStack() as hooks:
        for name, child in children:

            def after(
                module: nn.Module, args: tuple, kwargs: dict, result: object, name: str = name
            ) -> None:
                reads = any(a is stream for a in (*args, *kwargs.values()))
                leaves = [t for _, t in tensor_leaves(result) if t.is_floating_point()]
                seen[name].append(leaves[0] if reads and len(leaves) == 1 else None)

            hooks.callback(child.register_forward_hook(after, with_kwargs=True).remove)
        with torch.enable_grad():
            output = call.apply(stream)
    for name, _ in children:
        calls = seen[name]
        if len(calls) == 1 and calls[0] is not None and _adds(output, calls[0]):
            return f"{call.name}.{name}" if call.name else name
    return None


def split_function(block: Block, shortcut: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The block as a function of its input ``x`` and, apart, of its shortcut's input ``s``: the
    shortcut module reads ``s`` where it would read ``x``. Equal to the block at ``(x, x)``."""
    call = block.calls[0]
    prefix = f"{call.name}." if call.name else ""
    child = call.module.get_submodule(shortcut.removeprefix(prefix))
    rest = list(block.calls[1:])

    def apply(x: Tensor, s: Tensor) -> Tensor:
        x, s = x.clone(), s.clone()

        def swap(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            args = tuple(s if a is x else a for a in args)
            return args, {k: s if a is x else a for k, a in kwargs.items()}

        handle = child.register_forward_pre_hook(swap, with_kwargs=True)
        try:
            y = call.apply(x)
        finally:
            handle.remove()
        for later in rest:
            y = later.apply(y)
        return y

    return apply
