"""Step-by-step unrolls that stand in for PyTorch's recurrent modules during a probe run.

Inside :func:`unrolled`, every ``nn.RNN``/``LSTM``/``GRU`` and every cell in the model runs
through :mod:`gradscope.recurrent.cells` one time step at a time, reproducing the module's
output to float precision while keeping each state ``s_t`` as its own autograd node. One
backward pass then yields ``dL/ds_t`` for every step of every (layer, direction), and each
core's trace holds the states and input drives its Jacobians are taken at. Custom cells named
by the user run their own forward, and hand back views of one flat state node per call.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from gradscope.dataflow import reaches
from gradscope.errors import GradscopeError
from gradscope.probe.calls import CellCall, default_call
from gradscope.probe.structure import map_tensors, place, tensor_leaves
from gradscope.recurrent.cells import (
    CellSpec,
    CellWeights,
    input_drive,
    layer_weights,
    module_kind,
    step_function,
)
from gradscope.recurrent.custom import CustomCell, DriveLayout, StateLayout, state_tensors
from gradscope.taxonomy import (
    RECURRENT,
    classes,
    is_builtin_recurrent,
    is_recurrent_cell,
    is_within,
    recurrent_modules,
)


@dataclass(frozen=True)
class Core:
    """One driven recurrent system: a (layer, direction) of a module, or a cell.

    A custom cell has no :class:`CellWeights`; its state map comes from ``custom``.
    """

    name: str
    layer: int
    direction: str
    spec: CellSpec
    weights: CellWeights | None
    is_cell: bool = False
    num_layers: int = 1
    bidirectional: bool = False
    batch_first: bool = False
    custom: CustomCell | None = None


@dataclass
class Call:
    """One call of a core: T steps over a batch of B, in processing order.

    ``made_of`` holds, for a custom cell, the tensors it returned that each state node was
    made from; ``gradient_at_sources`` says to take the gradient at those rather than at the
    node: the one state tensor of a cell that also returned a readout computed from it, which
    the loss may read at that same step. (With several state tensors one may be computed from
    another inside the cell, and the gradient at it would count that path too: there the node
    is used, and a readout at the last step is not seen.)
    """

    prev_states: Tensor
    drives: Tensor
    states: list[Tensor]
    reverse: bool
    made_of: list[list[Tensor]] | None = None
    gradient_at_sources: bool = False

    @property
    def batch(self) -> int:
        """Batch size of the call."""
        return self.prev_states.shape[1]


@dataclass
class Trace:
    """What one core saw during the probe run, call by call; ``fed_back``: a call read, as
    input, something computed from the state the call before gave (through other modules:
    an autoregressive readout, an attention context), which the step map holds;
    ``state_changed``: a custom cell was given another state than the one it returned the
    call before (``returned``: the ids of those tensors), changed by the model in between."""

    core: Core
    calls: list[Call] = field(default_factory=list)
    fed_back: bool = False
    state_changed: bool = False
    returned: set[int] = field(default_factory=set)

    def note_feedback(self, tensors: list[Tensor]) -> None:
        """Mark the trace when one of ``tensors`` (a call's inputs) was computed from the
        last state recorded."""
        if self.fed_back or not self.calls:
            return
        call = self.calls[-1]
        last = [call.states[-1], *(call.made_of[-1] if call.made_of else [])]
        self.fed_back = any(reaches(t, last) for t in tensors)

    @property
    def steps(self) -> int:
        """Number of steps taken, over all calls."""
        return sum(len(call.states) for call in self.calls)

    @property
    def states(self) -> list[Tensor]:
        """Every state node, call after call, in processing order."""
        return [s for call in self.calls for s in call.states]

    def record(self, prev_states: Tensor, drives: Tensor, states: list[Tensor], reverse: bool):
        """Add one call: (T, B, n) states before each step, (T, B, G) drives, T state nodes."""
        self.calls.append(Call(prev_states.detach(), drives.detach(), states, reverse))

    def gradient_targets(self) -> list[list[Tensor]]:
        """For each state, in processing order, the tensors its gradient is gathered from."""
        return [
            sources
            for call in self.calls
            for sources in (
                call.made_of if call.gradient_at_sources else [[state] for state in call.states]
            )
        ]

    def trajectory(self) -> tuple[Tensor, Tensor]:
        """(state before, drive) of each step, (steps, B, n) and (steps, B, G), call after call.

        Calls with another batch size than the first (a module reused on other inputs) are left
        out: a trajectory follows one batch of sequences.
        """
        same = self._one_batch()
        return torch.cat([c.prev_states for c in same]), torch.cat([c.drives for c in same])

    def _one_batch(self) -> list[Call]:
        """The calls with the first call's batch size."""
        return [call for call in self.calls if call.batch == self.calls[0].batch]

    def next_states(self) -> Tensor:
        """The state after each step (steps, B, n), detached, for the calls of
        :meth:`trajectory`."""
        return torch.stack([s.detach() for call in self._one_batch() for s in call.states])

    def time_order(self, per_step: list[float]) -> list[float]:
        """Reorder per-step values from processing order to time order within each call."""
        ordered: list[float] = []
        start = 0
        for call in self.calls:
            chunk = per_step[start : start + len(call.states)]
            ordered.extend(reversed(chunk) if call.reverse else chunk)
            start += len(call.states)
        return ordered


class Recorder:
    """Collects one :class:`Trace` per core while the patched modules run."""

    def __init__(self) -> None:
        self.traces: dict[tuple[str, int, str], Trace] = {}
        self.module_cores: dict[str, dict[tuple[int, int], Core]] = {}
        self.stated: set[str] = set()  # custom cells whose template gives the state

    def run(self, core: Core, inputs: Tensor, initial: Tensor, reverse: bool) -> Tensor:
        """Unroll ``core`` over time-major ``inputs`` (T, B, F); return all states (T, B, n)."""
        self.trace(core).note_feedback([inputs])
        drives = input_drive(core.spec, core.weights, inputs)
        step = step_function(core.spec, core.weights)
        order = range(len(drives) - 1, -1, -1) if reverse else range(len(drives))
        state, prev_states, states = initial, [], []
        for t in order:
            prev_states.append(state)
            state = step(state, drives[t])
            states.append(state)
        processing_drives = drives.flip(0) if reverse else drives
        self.trace(core).record(torch.stack(prev_states), processing_drives, states, reverse)
        return torch.stack(states[::-1] if reverse else states)

    def trace(self, core: Core) -> Trace:
        """The trace of ``core``, started on its first call."""
        return self.traces.setdefault((core.name, core.layer, core.direction), Trace(core))


def _module_cores(name: str, module: nn.Module) -> dict[tuple[int, int], Core]:
    layers = module.num_layers
    directions = 2 if module.bidirectional else 1
    cores = {}
    for layer in range(layers):
        for d in range(directions):
            weights = layer_weights(module, layer, reverse=d == 1)
            input_size = module.input_size if layer == 0 else weights.weight_ih.shape[1]
            cores[(layer, d)] = Core(
                name=name,
                layer=layer,
                direction="reverse" if d == 1 else "forward",
                spec=CellSpec(
                    module_kind(module), input_size, module.hidden_size, module.proj_size or 0
                ),
                weights=weights,
                num_layers=layers,
                bidirectional=bool(module.bidirectional),
                batch_first=bool(module.batch_first),
            )
    return cores


def _initial_state(core: Core, hx, index: int | None, batch: int, like: Tensor) -> Tensor:
    """The flat initial state of one core from the module's ``hx`` (zeros when absent)."""
    spec = core.spec
    if hx is None:
        return like.new_zeros(batch, spec.state_size)
    if spec.kind == "lstm":
        h, c = hx
        if index is not None:
            h, c = h[index], c[index]
        return torch.cat((h, c), dim=-1)
    return hx if index is None else hx[index]


def _unrolled_module_forward(name: str, module: nn.Module, recorder: Recorder) -> Callable:
    is_lstm = module_kind(module) == "lstm"

    def forward(input, hx=None):
        if isinstance(input, PackedSequence):
            x, lengths = pad_packed_sequence(input)
            if bool((lengths != lengths[0]).any()):
                raise GradscopeError(
                    f"{name} got a PackedSequence of unequal lengths; probe with sequences of "
                    "one length (gradscope's probes all have --steps steps)"
                )
            unbatched = False
        else:
            unbatched = input.dim() == 2
            x = input.unsqueeze(1) if unbatched else input
            if module.batch_first and not unbatched:
                x = x.transpose(0, 1)
        if unbatched and hx is not None:
            hx = tuple(h.unsqueeze(1) for h in hx) if is_lstm else hx.unsqueeze(1)
        cores = recorder.module_cores[name]
        directions = 2 if module.bidirectional else 1
        layer_input, finals = x, []
        for layer in range(module.num_layers):
            outputs = []
            for d in range(directions):
                core = cores[(layer, d)]
                initial = _initial_state(core, hx, layer * directions + d, x.shape[1], x)
                states = recorder.run(core, layer_input, initial, reverse=d == 1)
                outputs.append(states[..., : core.spec.output_size])
                finals.append(states[0] if d == 1 else states[-1])
            layer_input = torch.cat(outputs, dim=-1)
            if layer < module.num_layers - 1 and module.dropout:
                layer_input = F.dropout(layer_input, module.dropout, module.training)
        final = torch.stack(finals)
        out_size = cores[(0, 0)].spec.output_size
        h_n, c_n = final[..., :out_size], final[..., out_size:]
        output = layer_input
        if isinstance(input, PackedSequence):
            output = pack_padded_sequence(output, lengths, enforce_sorted=False)
        elif unbatched:
            output, h_n, c_n = output.squeeze(1), h_n.squeeze(1), c_n.squeeze(1)
        elif module.batch_first:
            output = output.transpose(0, 1)
        return output, ((h_n, c_n) if is_lstm else h_n)

    return forward


def _unrolled_cell_forward(name: str, module: nn.Module, recorder: Recorder) -> Callable:
    core = recorder.module_cores[name][(0, 0)]

    def forward(input, hx=None):
        unbatched = input.dim() == 1
        x = input.unsqueeze(0) if unbatched else input
        if unbatched and hx is not None:
            hx = tuple(h.unsqueeze(0) for h in hx) if core.spec.kind == "lstm" else hx.unsqueeze(0)
        initial = _initial_state(core, hx, None, x.shape[0], x)
        state = recorder.run(core, x.unsqueeze(0), initial, reverse=False)[0]
        if unbatched:
            state = state.squeeze(0)
        h = state[..., : core.spec.output_size]
        if core.spec.kind == "lstm":
            return h, state[..., core.spec.output_size :]
        return h

    return forward


def _custom_core(
    recorder: Recorder, name: str, cell: CustomCell, skeleton: list, stated: bool
) -> Core:
    """The core of a custom cell, made on its first call; later calls must keep its shapes
    and values other than tensors. The first call that gives the state becomes the template
    the cell is stepped with (``skeleton``: the call with its tensors left out)."""
    cores = recorder.module_cores.setdefault(name, {})
    spec = CellSpec("custom", cell.input_size, cell.layout.size)
    core = cores.setdefault((0, 0), Core(name, 0, "forward", spec, None, True, custom=cell))
    first = core.custom
    if (first.layout, first.drive) != (cell.layout, cell.drive):
        raise GradscopeError(
            f"--cell {name} was called with states {list(map(tuple, first.layout.shapes))} and "
            f"held tensors {_shapes(first.drive)}, later with "
            f"{list(map(tuple, cell.layout.shapes))} and {_shapes(cell.drive)} (batch dimension "
            "left out); a cell needs one shape"
        )
    if first is cell or (stated and name not in recorder.stated):
        first.template, first.call = skeleton, cell.call
        if stated:
            recorder.stated.add(name)
    changed = _changed_value(first.template, skeleton, first.call, cell.call)
    if changed is not None:
        raise GradscopeError(
            f"--cell {name} is called with {changed} that changes between calls; gradscope "
            "holds arguments per step as tensors only: pass it as a tensor"
        )
    return core


def _shapes(drive: DriveLayout) -> list[tuple[int, ...]]:
    return [tuple(held.shape[1:] if held.per_row else held.shape) for held in drive.held]


def _changed_value(first: list, later: list, *calls: CellCall) -> str | None:
    """The argument other than a tensor whose value differs between two calls (their state
    arguments left out), in words; None when they agree."""
    emptied = {path[:2]: None for call in calls for path in call.inputs}
    (args, kwargs), (other_args, other_kwargs) = place(first, emptied), place(later, emptied)
    pairs = [(f"argument {i}", *pair) for i, pair in enumerate(zip(args, other_args, strict=False))]
    pairs += [(f"keyword {key}", kwargs[key], other_kwargs.get(key)) for key in kwargs]
    for label, before, after in pairs:
        if not _same(before, after):
            return f"{label} ({_short(before)}, then {_short(after)})"
    return None


def _same(a: object, b: object) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return a is b


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 20 else text[:17] + "..."


def _unrolled_custom_forward(
    name: str, module: nn.Module, original: Callable, recorder: Recorder, given: CellCall | None
) -> Callable:
    """A forward that runs ``original`` and hands back its next state as views of one flat
    state node (B, n); every other tensor of the call is recorded as the step's drive."""

    def forward(*args, **kwargs):
        structure = [list(args), kwargs]
        output = original(*args, **kwargs)
        call = given or default_call(structure, output)
        following = state_tensors(output, call.outputs) or [output]
        layout = StateLayout.of(following, name, "output")
        state_next = layout.flatten(following)
        if not layout.batched:
            state_next = state_next[None]
        batch = len(state_next)
        present = state_tensors(structure, call.inputs)
        stated = present is not None and all(t is not None for t in present)
        if stated:
            before = StateLayout.of(present, name, "state")
            if before != layout:
                raise GradscopeError(
                    f"--cell {name} maps a state shaped {[tuple(s) for s in before.shapes]} to "
                    f"one shaped {[tuple(s) for s in layout.shapes]} (batch dimension left "
                    "out); a cell must return its next state, shaped like its state"
                )
            state_prev = before.flatten(present).reshape(state_next.shape)
        else:
            state_prev = torch.zeros_like(state_next)
        inside = {path[:2] for path in call.inputs} if not stated else set(call.inputs)
        held = [
            (path, t)
            for path, t in tensor_leaves(structure)
            if path not in inside and path[:2] not in inside
        ]
        drive = DriveLayout.of(held, batch if layout.batched else None)
        skeleton = map_tensors(structure, lambda t: None)
        cell = CustomCell(module, call, layout, drive)
        core = _custom_core(recorder, name, cell, skeleton, stated)
        recorder.trace(core).note_feedback([t for _, t in held])
        drives = drive.flatten([t for _, t in held], batch, state_next)
        views = layout.unflatten(state_next if layout.batched else state_next[0])
        by_id = {id(t): view for t, view in zip(following, views, strict=True)}
        readout = any(id(t) not in by_id for _, t in tensor_leaves(output))
        trace = recorder.trace(core)
        if stated and trace.returned and not all(id(t) in trace.returned for t in present):
            trace.state_changed = True
        trace.returned = {id(view) for view in views}
        trace.record(state_prev[None], drives[None], [state_next], reverse=False)
        trace.calls[-1].made_of = [following]
        # a readout the cell computes from its one state tensor reads it where the cell left it
        trace.calls[-1].gradient_at_sources = readout and len(following) == 1
        return map_tensors(output, lambda t: by_id.get(id(t), t))

    return forward


def cores_of(name: str, module: nn.Module) -> dict[tuple[int, int], Core]:
    """The cores of a recurrent module or cell, keyed by (layer, direction index)."""
    if is_recurrent_cell(module):
        spec = CellSpec(module_kind(module), module.input_size, module.hidden_size)
        weights = layer_weights(module, None, reverse=False)
        return {(0, 0): Core(name, 0, "forward", spec, weights, is_cell=True)}
    return _module_cores(name, module)


def _dispatcher(original: Callable, handlers: dict[int, Callable]) -> Callable:
    """A class-level ``forward`` that runs the unroll for recorded instances, else PyTorch's."""

    def forward(self, *args, **kwargs):
        handler = handlers.get(id(self))
        if handler is None:
            return original(self, *args, **kwargs)
        return handler(*args, **kwargs)

    return forward


def custom_cells(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    """The modules the user named as custom cells, by path; refuse unknown or built-in ones."""
    modules = dict(model.named_modules(remove_duplicate=False))
    chosen = {}
    for name in names:
        module = modules.get(name)
        if module is None:
            paths = [path for path in modules if path]
            close = difflib.get_close_matches(name, paths, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise GradscopeError(
                f"--cell {name}: the model has no module of that name; {hint}"
                f"its modules are: {_first_few(paths)}"
            )
        if is_builtin_recurrent(module):
            raise GradscopeError(
                f"--cell {name} is a {type(module).__name__}, which gradscope analyses without "
                "--cell: drop the option"
            )
        alias = next((other for other, m in chosen.items() if m is module and other != name), None)
        if alias is not None:
            raise GradscopeError(f"--cell {alias} and --cell {name} are one module: name it once")
        chosen[name] = module
    return chosen


def _first_few(names: list[str], shown: int = 8) -> str:
    """``a, b, c`` or ``a, b, ... (12 in all)``; ``none`` for no names."""
    if len(names) <= shown:
        return ", ".join(names) or "none"
    return ", ".join(names[:shown]) + f", ... ({len(names)} in all)"


@contextmanager
def unrolled(
    model: nn.Module, cells: Sequence[str] | Mapping[str, CellCall | None] = ()
) -> Iterator[Recorder]:
    """Run every recurrent module and cell of ``model`` step by step while inside.

    The ``forward`` of PyTorch's recurrent classes is swapped at class level, so that subclasses
    with a ``forward`` of their own that calls ``super().forward`` are unrolled too. Each custom
    cell named in ``cells`` (with how the model calls it, where known) gets an instance-level
    ``forward`` until the context ends, which ``cell.forward(...)`` meets too; recurrent
    modules inside a custom cell are part of its map and run as PyTorch's.
    """
    calls = cells if isinstance(cells, Mapping) else dict.fromkeys(cells)
    custom = custom_cells(model, list(calls))
    recorder = Recorder()
    handlers: dict[int, Callable] = {}
    for name, module in recurrent_modules(model, scripted=False):
        if is_within(name, custom):
            continue
        recorder.module_cores[name] = cores_of(name, module)
        is_cell = is_recurrent_cell(module)
        make = _unrolled_cell_forward if is_cell else _unrolled_module_forward
        handlers[id(module)] = make(name, module, recorder)
    originals = {cls: cls.__dict__["forward"] for cls in classes(RECURRENT)}
    overridden: list[tuple[nn.Module, Callable | None]] = []
    try:
        for cls, original in originals.items():
            cls.forward = _dispatcher(original, handlers)
        for name, module in custom.items():
            overridden.append((module, module.__dict__.get("forward")))
            patched = _unrolled_custom_forward(name, module, module.forward, recorder, calls[name])
            module.__dict__["forward"] = patched
        yield recorder
    finally:
        for module, own in overridden:
            if own is None:
                del module.__dict__["forward"]
            else:
                module.__dict__["forward"] = own
        for cls, original in originals.items():
            cls.forward = original
