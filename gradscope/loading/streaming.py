"""A model larger than memory, analysed in part: the weights ``--only`` leaves out are read from
the checkpoint as the model runs, and let go at once.

The model is built with its parameters on the meta device (its buffers, such as a rotary
embedding's frequencies, computed as usual). The parameters of the modules ``--only`` selects are
read from the file; every other parameter gets a placeholder of its shape and dtype whose memory
is reserved but never written, so the operating system never backs it. While the model runs, a
``TorchFunctionMode`` hands each torch operation that reads a placeholder (or a view of one) the
weight itself, read from its safetensors shard (memory-mapped) in the analysis dtype; a weight
that autograd saves for the backward pass is saved as where to read it, and read again there.
So at most a few left-out weights are in memory at once, beside the selected modules.

Gradients are not taken with respect to left-out weights: the result of an operation that read
one of a parameter that requires a gradient becomes a leaf that requires one, so that every
gradient with respect to activations (all the views take) is as it would be.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map_only

from gradscope.errors import GradscopeError
from gradscope.loading.shards import ShardedSafetensors, open_shard

#: Tensor functions that read a tensor's shape, layout or flags, never its values: they see the
#: placeholder itself (a property's getter returns a view of it, which is read when used).
METADATA = frozenset(
    {
        "__get__",
        "__len__",
        "__hash__",
        "size",
        "dim",
        "ndimension",
        "numel",
        "nelement",
        "stride",
        "storage_offset",
        "is_contiguous",
        "is_floating_point",
        "is_complex",
        "element_size",
        "data_ptr",
        "untyped_storage",
        "get_device",
        "requires_grad_",
        "register_hook",
    }
)


#: Why a model whose left-out weights are read as it runs is not copied (to measure a fix, or
#: to trace it in another dtype).
NOT_COPIED = (
    "the model's weights outside --only are read from its file as it runs, and a copy would "
    "hold them all"
)

#: What the traced pass leaves out of a model whose left-out weights are read as it runs.
UNTAKEN_GRADIENTS = (
    "the largest gradient is over activations and the weights --only holds: gradients with "
    "respect to the weights read from the file as the model runs are not taken"
)


@contextmanager
def empty_parameters() -> Iterator[None]:
    """Modules built inside have their parameters on the meta device (no memory); their buffers
    are made as usual."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, parameter: nn.Parameter | None) -> None:
        register(module, name, parameter)
        if parameter is not None:
            module._parameters[name] = nn.Parameter(
                parameter.to("meta"), requires_grad=parameter.requires_grad
            )

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def _storage(tensor: Tensor) -> int:
    """The address of the memory ``tensor`` views (0 for none, or a transform's wrapper)."""
    try:
        return tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError, TypeError):
        return 0


@dataclass(frozen=True)
class _Saved:
    """A weight autograd saved for the backward pass, as where to read it again."""

    key: str
    size: torch.Size
    stride: tuple[int, ...]
    offset: int


class WeightStream:
    """The left-out weights of a model, read from the checkpoint as it runs.

    ``read(key)`` gives a checkpoint tensor (memory-mapped); ``streamed`` maps each left-out
    parameter to its key; ``kept`` are the paths of the modules whose weights are held.
    ``live_bytes`` and ``peak_bytes`` count the bytes of weights read and not yet let go.
    """

    def __init__(
        self,
        read: Callable[[str], Tensor],
        streamed: dict[nn.Parameter, str],
        held: dict[nn.Parameter, str],
        kept: list[str],
    ) -> None:
        self.read = read
        self.streamed = streamed
        self.held = held
        self.kept = kept
        self._placeholders: dict[int, str] = {}
        self._loaded: dict[int, tuple[str, int]] = {}  # address -> (key, reads alive)
        self._stacks: list[ExitStack] = []
        self.live_bytes = 0
        self.peak_bytes = 0
        self.reads = 0
        #: The keys of the left-out weights read while gradients were on.
        self.reached: set[str] = set()
        self.dtype = torch.float32
        self.device = torch.device("cpu")

    def reached_parameters(self) -> set[int]:
        """The ids of the left-out parameters the model read while gradients were on (their
        weights are constants of the graph, so a walk of it does not find them)."""
        return {id(p) for p, key in self.streamed.items() if key in self.reached}

    @property
    def streamed_parameters(self) -> int:
        """How many elements the left-out weights hold."""
        return sum(parameter.numel() for parameter in self.streamed)

    def place(self, model: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
        """Put the model on ``device`` in ``dtype``: the held weights read again from the
        checkpoint (so that a change of dtype and back loses nothing), the floating buffers
        converted, each left-out weight given a fresh placeholder."""
        self.dtype, self.device = dtype, device
        self._placeholders.clear()
        for parameter, key in self.streamed.items():
            parameter.data = torch.empty(parameter.shape, dtype=dtype, device=device)
            if parameter.numel():  # an empty one has no memory to tell it by, nor values
                self._placeholders[_storage(parameter)] = key
        for parameter, key in self.held.items():
            parameter.data = _converted(self.read(key), device, dtype)
        for module in model.modules():
            for name, tensor in module._buffers.items():
                if tensor is not None:
                    module._buffers[name] = _converted(tensor, device, dtype)

    @contextmanager
    def cast(self, model: nn.Module, dtype: torch.dtype) -> Iterator[nn.Module]:
        """The model in ``dtype`` while inside, then as it was: what a copy in that dtype
        would be, with no copy of the weights left out."""
        before = self.dtype
        buffers = [
            (module, name, tensor)
            for module in model.modules()
            for name, tensor in module._buffers.items()
            if tensor is not None
        ]
        self.place(model, self.device, dtype)
        try:
            yield model
        finally:
            for module, name, tensor in buffers:
                module._buffers[name] = tensor
            self.place(model, self.device, before)

    def named_tensors(self, model: nn.Module) -> Iterator[tuple[str, Tensor]]:
        """Every parameter and buffer of ``model`` by name, a left-out weight read from the
        checkpoint when its turn comes."""
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            key = self.streamed.get(tensor) if isinstance(tensor, nn.Parameter) else None
            yield name, self.read(key) if key is not None else tensor

    def attach(self, model: nn.Module, held: list[nn.Module]) -> None:
        """Stream while ``model`` runs, or runs a part of it on its own (the depth view runs
        each block alone): one of the ``held`` modules, or one that holds a left-out weight."""
        owners = [
            module
            for module in model.modules()
            if any(p in self.streamed for p in module._parameters.values() if p is not None)
        ]
        for module in dict.fromkeys([model, *held, *owners]):
            module.register_forward_pre_hook(self._enter)
            module.register_forward_hook(self._leave, always_call=True)

    def _enter(self, module: nn.Module, args: Any) -> None:
        stack = ExitStack()
        stack.enter_context(_Substitute(self))
        # torch.func transforms refuse saved-tensor hooks: the weights then stay until used
        with suppress(RuntimeError):
            stack.enter_context(torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack))
        self._stacks.append(stack)

    def _leave(self, module: nn.Module, args: Any, output: Any) -> None:
        self._stacks.pop().close()

    def key_of(self, tensor: Tensor) -> str | None:
        """The checkpoint key of the left-out weight ``tensor`` views, if it views one (a
        tensor inside a torch.func transform, address 0, never does)."""
        return self._placeholders.get(_storage(tensor) or -1)

    def fetch(self, key: str) -> Tensor:
        """The weight ``key``, read from the checkpoint in the analysis dtype and device."""
        tensor = self.read(key).to(device=self.device, dtype=self.dtype)
        self.reads += 1
        address = _storage(tensor)
        if not address:  # inside a torch.func transform, whose wrapper hides the memory
            return tensor
        size = tensor.untyped_storage().nbytes()
        _, count = self._loaded.get(address, (key, 0))
        self._loaded[address] = (key, count + 1)  # two reads may share a mapped file's pages
        self.live_bytes += size
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        # the memory lives as long as its storage, which a view may keep after the tensor
        weakref.finalize(tensor.untyped_storage(), self._let_go, address, size)
        return tensor

    def _let_go(self, address: int, size: int) -> None:
        self.live_bytes -= size
        key, count = self._loaded.pop(address)
        if count > 1:
            self._loaded[address] = (key, count - 1)

    def substitute(self, tensor: Tensor, key: str) -> Tensor:
        """The weight ``key`` read, viewed as the placeholder view ``tensor`` views it."""
        return self.fetch(key).as_strided(tensor.size(), tensor.stride(), tensor.storage_offset())

    def is_read(self, tensor: Tensor) -> bool:
        """Whether ``tensor`` views a weight read from the checkpoint."""
        return _storage(tensor) in self._loaded

    def _pack(self, tensor: Tensor) -> Any:
        key, _ = self._loaded.get(_storage(tensor), (None, 0))
        if key is None:
            return tensor
        return _Saved(key, tensor.size(), tensor.stride(), tensor.storage_offset())

    def _unpack(self, saved: Any) -> Tensor:
        if not isinstance(saved, _Saved):
            return saved
        return self.fetch(saved.key).as_strided(saved.size, saved.stride, saved.offset)


def _converted(tensor: Tensor, device: torch.device, dtype: torch.dtype) -> Tensor:
    return tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else None)


class _Substitute(TorchFunctionMode):
    """Each operation that reads a left-out weight gets the weight itself; what it computes
    from the weight of a parameter that requires a gradient requires one (a leaf)."""

    def __init__(self, stream: WeightStream) -> None:
        super().__init__()
        self.stream = stream

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in METADATA:
            return func(*args, **kwargs)
        wants_grad: list[bool] = []

        def weight(tensor: Tensor) -> Tensor:
            key = self.stream.key_of(tensor)
            if key is None:
                return tensor
            wants_grad.append(tensor.requires_grad)
            if torch.is_grad_enabled():
                self.stream.reached.add(key)
            return self.stream.substitute(tensor, key)

        args, kwargs = tree_map_only(Tensor, weight, (args, kwargs))
        result = func(*args, **kwargs)
        if (
            any(wants_grad)
            and torch.is_grad_enabled()
            and isinstance(result, Tensor)
            and result.is_floating_point()
            and not result.requires_grad
            and _storage(result)  # a plain tensor: inside a torch.func transform, a wrapper
            and not self.stream.is_read(result)
        ):
            # an embedding's lookup: its output a leaf that requires a gradient, handed on
            # through a product with 1 so that the model may change it in place
            result = result.requires_grad_() * 1
        return result


@dataclass
class Streamed:
    """A model built for streaming, or why it was not (``stream`` None: load it whole)."""

    module: nn.Module | None
    stream: WeightStream | None
    why_not: str | None = None


def _block_lists(model: nn.Module) -> str:
    """Where the model's lists of blocks are, in words (``model.layers.0 to model.layers.31``)."""
    lists = [
        f"{path}.0 to {path}.{len(module) - 1}"
        for path, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) > 1
    ]
    return f"its blocks are {', '.join(lists)}" if lists else "it has no list of blocks"


def _owner(path: str) -> str:
    """The path of the module that holds ``path`` (``""``: the model)."""
    return path.rsplit(".", 1)[0] if "." in path else ""


def checkpoint_keys(
    model: nn.Module, keys: Mapping[str, tuple[int, ...]], prefix: str = ""
) -> tuple[dict[nn.Parameter, tuple[str, list[str]]], str | None]:
    """Each parameter (tied ones once) with its checkpoint key and every path it is known by,
    from ``keys`` (name -> shape); or why some parameter has none that fits."""
    named: dict[nn.Parameter, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        named.setdefault(parameter, []).append(name)
    found: dict[nn.Parameter, tuple[str, list[str]]] = {}
    for parameter, paths in named.items():
        candidates = [
            candidate
            for path in paths
            for candidate in (path, f"{prefix}.{path}", path.removeprefix(f"{prefix}."))
        ]
        key = next((c for c in candidates if c in keys), None)
        if key is None:
            return {}, f"{paths[0]} has no weight of that name in the checkpoint"
        if tuple(keys[key]) != tuple(parameter.shape):
            return {}, (
                f"{key} is {tuple(keys[key])} in the checkpoint but {tuple(parameter.shape)} in "
                "the model"
            )
        found[parameter] = (key, paths)
    return found, None


def stream_model(
    model: nn.Module,
    keys: Mapping[str, tuple[int, ...]],
    read: Callable[[str], Tensor],
    selects: Callable[[str], bool],
    prefix: str = "",
    selection: str = "--only",
) -> Streamed:
    """``model`` (its parameters on the meta device) with the weights of the modules
    ``selects`` picks read from the checkpoint and every other weight streamed; the whole
    model to load instead, with why, when its parameters do not map one to one onto
    the checkpoint's names and shapes, or when ``selects`` picks every weight. ``selects``
    picks a module inside one it picks too (as :func:`gradscope.options.selects_module`
    does); ``selection`` names what selects in an error (``--only layers.1*``)."""
    found, why_not = checkpoint_keys(model, keys, prefix)
    if why_not:
        return Streamed(None, None, why_not)
    replaced: dict[int, nn.Parameter] = {}
    streamed: dict[nn.Parameter, str] = {}
    held: dict[nn.Parameter, str] = {}
    for parameter, (key, paths) in found.items():
        selected = any(selects(_owner(path)) for path in paths)
        value = read(key) if selected else torch.empty(parameter.shape, dtype=parameter.dtype)
        new = nn.Parameter(value, requires_grad=parameter.requires_grad)
        replaced[id(parameter)] = new
        (held if selected else streamed)[new] = key
    if not streamed:
        return Streamed(None, None, "--only selects every weight")
    if not held:  # found now, not after a pass over every weight of a large model
        raise GradscopeError(
            f"{selection} selects no module with weights in {type(model).__name__}; "
            f"{_block_lists(model)}: give a path or a glob such as 'layers.1*'"
        )
    for module in model.modules():
        for name, parameter in module._parameters.items():
            if parameter is not None:
                module._parameters[name] = replaced[id(parameter)]
    roots = {  # the outermost modules selected
        path: module
        for path, module in model.named_modules()
        if path and selects(path) and not selects(_owner(path))
    }
    buffers = dict(model.named_buffers())
    for key in keys:
        if key in buffers:  # a persistent buffer the checkpoint holds
            buffers[key].data = read(key).to(buffers[key].dtype)
    stream = WeightStream(read, streamed, held, list(roots))
    stream.attach(model, list(roots.values()))
    return Streamed(model, stream)


class ShardReader:
    """The tensors of a safetensors checkpoint by key, each shard opened once and kept open."""

    def __init__(self, tensors: ShardedSafetensors) -> None:
        self.tensors = tensors
        self._files = ExitStack()
        self._open: dict[Path, Any] = {}

    def _shard(self, key: str) -> Any:
        path = self.tensors.shard_of(key)
        if path not in self._open:
            self._open[path] = self._files.enter_context(open_shard(path, self.tensors.source))
        return self._open[path]

    def __call__(self, key: str) -> Tensor:
        return self._shard(key).get_tensor(key)
