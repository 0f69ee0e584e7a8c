"""Where a NaN or Inf first appears, and the largest values a pass produces.

:func:`nonfinite_weights` names every parameter and buffer that already holds NaN or Inf.
:func:`trace_numerics` runs the model forward and backward once on the probe under a
``TorchFunctionMode`` that sees each torch operation the model's Python code calls, with
module hooks saying which module runs it and a hook on each operation's autograd node.

Forward, a non-finite result whose inputs were all finite is a *source*; one that read a
non-finite value carries that value's source on. When the output is not finite, the earliest
source it carries is where the forward broke: a ``-inf`` mask that softmax turns back into
finite numbers is a source, but never an origin. Backward, when a parameter's or the input's
gradient is not finite, the first autograd node (in the order autograd ran them) whose result
was not finite is where the backward broke, and what it saved or received says why.
"""

from __future__ import annotations

import linecache
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from gradscope.probe import Probe, projection_loss
from gradscope.report import Origin, Peak, WeightFault

#: Frames in these folders are PyTorch's or gradscope's own: a source line is the model's.
_OWN_FOLDERS = (os.path.dirname(torch.__file__), os.path.dirname(__file__))

#: How a non-finite value read from the probe's own input is named.
PROBE_INPUT = "the probe's input"
LOGS = {"log", "log2", "log10", "log1p", "xlogy", "log_softmax", "logsumexp"}
ROOTS = {"sqrt", "rsqrt"}
DIVISIONS = {"div", "true_divide", "reciprocal", "floor_divide", "remainder", "fmod"}
POWERS = {"pow", "float_power"}
EXPONENTIALS = {"exp", "exp2", "expm1", "cosh", "sinh"}
#: Operations that write a value they are given (a mask's -inf): a source, not a fault.
FILLS = {"masked_fill", "fill", "full", "full_like", "where", "index_fill", "fill_diagonal"}
#: Dunder names of the arithmetic operators, by the operation they stand for.
OPERATORS = {
    "truediv": "div",
    "itruediv": "div",
    "rtruediv": "rdiv",
    "floordiv": "floor_divide",
    "rfloordiv": "rdiv",
    "pow": "pow",
    "ipow": "pow",
    "rpow": "rpow",
    "mul": "mul",
    "imul": "mul",
    "rmul": "mul",
    "add": "add",
    "iadd": "add",
    "radd": "add",
    "sub": "sub",
    "isub": "sub",
    "rsub": "sub",
    "matmul": "matmul",
    "rmatmul": "matmul",
    "mod": "remainder",
}


def op_name(func: Callable) -> str:
    """The operation ``func`` performs: ``log`` for ``torch.log``, ``Tensor.log_`` or
    ``Tensor.log``; ``div`` for ``/``."""
    name = getattr(func, "__name__", None) or str(func)
    if name.startswith("__") and name.endswith("__"):
        return OPERATORS.get(name[2:-2], name[2:-2])
    return name.rstrip("_") or name


def _floating(value: object) -> bool:
    return isinstance(value, Tensor) and value.is_floating_point() and value.numel() > 0


def _magnitude(tensor: Tensor) -> float:
    """max |x| over the tensor (NaN when it holds NaN, inf when it holds Inf): one reduction
    that answers both what its largest value is and whether it is finite."""
    return float(tensor.detach().abs().amax())


#: A value this close to its dtype's largest is a sentinel (a mask of ``finfo.min``), not an
#: activation: the largest values leave it out.
SENTINEL = 0.999


def _counted(tensor: Tensor, magnitude: float) -> float:
    """The tensor's largest magnitude as the largest values count it: over its finite
    values, leaving out sentinels at its dtype's extreme (0 when nothing is left)."""
    if math.isfinite(magnitude) and magnitude < SENTINEL * torch.finfo(tensor.dtype).max:
        return magnitude
    values = tensor.detach().abs()
    kept = torch.isfinite(values) & (values < SENTINEL * torch.finfo(tensor.dtype).max)
    return float(torch.where(kept, values, 0).amax())


def _kind(tensor: Tensor) -> str:
    """``NaN`` or ``Inf`` (``NaN`` when it holds both): what a non-finite tensor holds."""
    return "NaN" if bool(torch.isnan(tensor.detach()).any()) else "Inf"


def _count(tensor: Tensor, where: Tensor) -> str:
    return f"{int(where.sum())} of {tensor.numel()}"


def nonfinite_weights(module: nn.Module) -> list[WeightFault]:
    """Every floating-point parameter and buffer of ``module`` that holds NaN or Inf."""
    return nonfinite_tensors([*module.named_parameters(), *module.named_buffers()])


def nonfinite_tensors(named: Iterable[tuple[str, Tensor]]) -> list[WeightFault]:
    """Every floating-point tensor of ``named`` (name, tensor) that holds NaN or Inf."""
    faults = []
    for name, tensor in named:
        if not _floating(tensor):
            continue
        values = tensor.detach()
        nan = int(torch.isnan(values).sum())
        inf = int(torch.isinf(values).sum())
        if nan or inf:
            faults.append(WeightFault(name, nan, inf, values.numel()))
    return faults


def _caller() -> tuple[str, int] | None:
    """(file, line) of the model's own code that called the operation, or None when it ran
    inside PyTorch's modules (an ``nn.Linear``: its module says it all)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back  # the tracer's own frames
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename.startswith(_OWN_FOLDERS[1] + os.sep):
            return None  # back in gradscope without meeting the model's code
        if not filename.startswith(_OWN_FOLDERS[0] + os.sep) and not filename.startswith("<"):
            return filename, frame.f_lineno
        frame = frame.f_back
    return None


def source_line(caller: tuple[str, int] | None) -> str | None:
    """``file.py:12: the line``, from :func:`_caller`'s answer."""
    if caller is None:
        return None
    filename, line = caller
    text = linecache.getline(filename, line).split("  #")[0].strip()  # no inline comment
    where = f"{os.path.basename(filename)}:{line}"
    return f"{where}: {text}" if text else where


def _reads(args: tuple, kwargs: dict) -> list[Tensor]:
    leaves, _ = tree_flatten((args, kwargs))
    return [leaf for leaf in leaves if _floating(leaf)]


def _number(value: float) -> str:
    return f"{value:.3g}"


def forward_cause(op: str, args: tuple, kwargs: dict, result: Tensor) -> tuple[str, str]:
    """Why ``op`` made a non-finite ``result`` from finite inputs: a cause of
    :data:`~gradscope.report.ORIGIN_CAUSES` and the numbers that show it."""
    reads = _reads(args, kwargs)
    first = next((t.detach() for t in reads), None)
    if op in FILLS:
        return "nonfinite-input", f"{op} writes a non-finite value it is given (a mask's -inf?)"
    if first is not None and op in LOGS and op not in ("log_softmax", "logsumexp"):
        floor = -1.0 if op == "log1p" else 0.0
        low = float(first.amin())
        if low <= floor:
            bad = first <= floor
            return (
                "log-of-non-positive",
                f"{op} of values down to {_number(low)} ({_count(first, bad)} at or below "
                f"{floor:g})",
            )
    if first is not None and op in ROOTS:
        low = float(first.amin())
        if low < 0:
            return "sqrt-of-negative", f"{op} of values down to {_number(low)}"
        if op == "rsqrt" and low == 0:
            return "division-by-zero", f"rsqrt of 0 ({_count(first, first == 0)} values)"
    if op in DIVISIONS or op == "rdiv":
        denominator = _denominator(op, args)
        if denominator is not None:
            zeros = denominator == 0
            if bool(zeros.any()):
                return (
                    "division-by-zero",
                    f"divides by 0 ({_count(denominator, zeros)} of the divisor's values)",
                )
    if first is not None and op in POWERS | {"rpow"}:
        negative = first < 0
        if bool(negative.any()) and bool(torch.isnan(result.detach()).any()):
            return (
                "power-of-negative",
                f"{op} of negative values down to {_number(float(first.amin()))}",
            )
    limit = torch.finfo(result.dtype).max
    if first is not None and op in EXPONENTIALS:
        high = float(first.amax())
        return (
            "overflow",
            f"{op} of values up to {_number(high)} exceeds {_dtype(result)}'s largest value "
            f"({_number(limit)}; {op} overflows above {_number(math.log(limit))})",
        )
    if not bool(torch.isnan(result.detach()).any()):
        largest = max((_magnitude(t) for t in reads), default=0.0)
        return (
            "overflow",
            f"the result exceeds {_dtype(result)}'s largest value ({_number(limit)}); its "
            f"inputs reach {_number(largest)}",
        )
    return "nan-from-finite", f"{op} made NaN from finite inputs"


def _in_place_cause(op: str) -> tuple[str, str]:
    """The cause of an in-place operation's non-finite result: its input is overwritten, so
    only the operation tells it."""
    by_kind = ((LOGS, "log-of-non-positive"), (ROOTS, "sqrt-of-negative"))
    by_kind += ((DIVISIONS, "division-by-zero"),)
    cause = next((cause for ops, cause in by_kind if op in ops), "nan-from-finite")
    return cause, f"{op} in place: the values it read were overwritten by its result"


def _denominator(op: str, args: tuple) -> Tensor | None:
    if op in ("reciprocal", "rdiv"):
        candidate = args[0] if args else None
    else:
        candidate = args[1] if len(args) > 1 else None
    if isinstance(candidate, Tensor) and candidate.is_floating_point():
        return candidate.detach()
    if isinstance(candidate, (int, float)) and candidate == 0:
        return torch.zeros(1)
    return None


def _dtype(tensor: Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


@dataclass
class _Operation:
    """One recorded operation: where it ran and whether its result was finite."""

    module: str
    module_type: str
    op: str
    call: int
    step: int | None
    finite: bool
    caller: tuple[str, int] | None = None


@dataclass
class _Source:
    """A non-finite result made from finite inputs, as an :class:`Origin` in waiting."""

    operation: _Operation
    value: str
    cause: str
    detail: str


@dataclass
class NumericsTrace:
    """What one traced forward and backward pass found (see the module's docstring)."""

    forward: Origin | None = None
    backward: Origin | None = None
    output_finite: bool = True
    largest_activation: Peak | None = None
    largest_gradient: Peak | None = None


class _Tracer(TorchFunctionMode):
    """Sees each torch operation: records its module, checks its result, follows non-finite
    values from their source."""

    def __init__(self, names: dict[int, str], cells: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.names = names
        self.cells = cells
        self.running: list[tuple[str, nn.Module]] = []
        self.calls: dict[str, int] = {}
        self.sources: list[_Source] = []
        self.carried: dict[int, tuple[int, Tensor]] = {}  # id(tensor) -> (source, tensor)
        self.largest: Peak | None = None
        self.nodes: dict[object, _Operation] = {}

    # the modules that run -------------------------------------------------------------------
    def enter(self, path: str, module: nn.Module) -> None:
        self.running.append((path, module))
        self.calls[path] = self.calls.get(path, 0) + 1

    def leave(self) -> None:
        if self.running:
            self.running.pop()

    def _where(self) -> tuple[str, nn.Module | None]:
        return self.running[-1] if self.running else ("", None)

    # each operation ---------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        leaves = [leaf for leaf in tree_flatten(result)[0] if _floating(leaf)]
        if not leaves:
            return result
        path, module = self._where()
        op = op_name(func)
        magnitudes = [_magnitude(leaf) for leaf in leaves]
        finite = all(math.isfinite(m) for m in magnitudes)
        operation = _Operation(
            path,
            type(module).__name__ if module is not None else "",
            op,
            self.calls.get(path, 0),
            None,
            finite,
            _caller(),
        )
        for leaf, magnitude in zip(leaves, magnitudes, strict=True):
            counted = _counted(leaf, magnitude)
            if self.largest is None or counted > self.largest.value:
                self.largest = Peak(counted, path, op)
            if leaf.grad_fn is not None and leaf.grad_fn not in self.nodes:
                self.nodes[leaf.grad_fn] = operation
        if not finite:
            broken = [
                leaf for leaf, m in zip(leaves, magnitudes, strict=True) if not math.isfinite(m)
            ]
            self._follow(operation, args, kwargs, leaves, broken, module)
        return result

    def _follow(self, operation, args, kwargs, leaves, broken, module) -> None:
        """Give each non-finite result (``broken``, among the ``leaves`` the operation gave)
        the source it descends from (a new one when it read nothing non-finite)."""
        everything = _reads(args, kwargs)
        carried = [self.carried[id(t)][0] for t in everything if id(t) in self.carried]
        # an in-place operation's target now holds its result: not what it read
        reads = [t for t in everything if all(t is not leaf for leaf in leaves)]
        if carried:
            source = min(carried)
        else:
            bad = broken[0]
            operation.step = _first_step(module, bad)
            if isinstance(module, nn.RNNCellBase) or operation.module in self.cells:
                operation.step = operation.call - 1  # a cell is called once per step
            unread = next((t for t in reads if not math.isfinite(_magnitude(t))), None)
            if unread is not None:
                cause, detail = self._unseen_cause(unread)
            elif operation.step is not None and isinstance(module, nn.RNNBase):
                cause, detail = _recurrent_cause(module, bad, operation.step)
            elif len(reads) < len(everything):
                cause, detail = _in_place_cause(operation.op)
            else:
                cause, detail = forward_cause(operation.op, args, kwargs, bad)
            self.sources.append(_Source(operation, _kind(bad), cause, detail))
            source = len(self.sources) - 1
        for leaf in broken:
            self.carried[id(leaf)] = (source, leaf)  # the tensor is kept: its id stays its own

    def _unseen_cause(self, tensor: Tensor) -> tuple[str, str]:
        """The cause of a non-finite value read from somewhere no operation made it."""
        kind = _kind(tensor)
        name = self.names.get(id(tensor))
        if name == PROBE_INPUT:
            return "nonfinite-input", f"it reads {name}, which holds {kind}"
        if name is not None:
            return "nonfinite-weight", f"it reads {name}, which holds {kind}"
        return "nonfinite-input", f"it reads a tensor that already holds {kind} (an input?)"

    def origin_of(self, output: list[Tensor]) -> Origin | None:
        """The earliest source the non-finite output tensors carry."""
        carried = [self.carried[id(t)][0] for t in output if id(t) in self.carried]
        if not carried:
            return None
        chosen = self.sources[min(carried)]
        return _origin("forward", chosen.operation, chosen.value, chosen.cause, chosen.detail)


def _origin(direction: str, operation: _Operation, value: str, cause: str, detail: str) -> Origin:
    return Origin(
        direction=direction,
        module=operation.module,
        module_type=operation.module_type or "top level",
        op=operation.op,
        value=value,
        cause=cause,
        detail=detail,
        source=source_line(operation.caller),
        step=operation.step,
        call=operation.call or None,
    )


def _first_step(module: nn.Module | None, result: Tensor) -> int | None:
    """The first time step a recurrent module's output is not finite at (its time axis by
    its layout); a cell's step is its call count, set elsewhere."""
    if not isinstance(module, nn.RNNBase) or result.dim() < 2:
        return None
    axis = 1 if (module.batch_first and result.dim() == 3) else 0
    bad = ~torch.isfinite(result.detach()).movedim(axis, 0).reshape(result.shape[axis], -1).all(-1)
    steps = torch.nonzero(bad).flatten()
    return int(steps[0]) if steps.numel() else None


def _recurrent_cause(module: nn.RNNBase, output: Tensor, step: int) -> tuple[str, str]:
    """Why a recurrent module's output broke at ``step``: an overflow when the steps before
    came near its dtype's largest value, else NaN from finite values."""
    axis = 1 if (module.batch_first and output.dim() == 3) else 0
    by_step = output.detach().movedim(axis, 0)
    limit = torch.finfo(output.dtype).max
    before = float(by_step[step - 1].abs().amax()) if step > 0 else 0.0
    if before > 1e-3 * limit:
        return (
            "overflow",
            f"its state reaches {_number(before)} at step {step - 1}, near {_dtype(output)}'s "
            f"largest value ({_number(limit)}), and is not finite at step {step}",
        )
    return "nan-from-finite", f"its output turns NaN at step {step} from finite values"


@contextmanager
def _hooked(model: nn.Module, tracer: _Tracer) -> Iterator[None]:
    """Every submodule says when it runs (its path and its call count)."""
    handles = []
    for path, module in model.named_modules():
        if isinstance(module, torch.jit.ScriptModule):
            continue

        def enter(_module, _args, path=path, module=module):
            tracer.enter(path, module)

        def leave(_module, _args, _output):
            tracer.leave()

        try:
            handles.append(module.register_forward_pre_hook(enter))
            handles.append(module.register_forward_hook(leave, always_call=True))
        except RuntimeError:  # a module that takes no hooks: its operations go to its parent
            continue
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _saved_zeros(node: object) -> str | None:
    """What the node saved for its derivative that is 0 (where log, sqrt or a divisor's
    derivative is infinite), in words; None when nothing is."""
    for attribute in dir(node):
        if not attribute.startswith("_saved_"):
            continue
        try:
            saved = getattr(node, attribute)
        except RuntimeError:
            continue
        if _floating(saved):
            zeros = saved.detach() == 0
            if bool(zeros.any()):
                return f"{int(zeros.sum())} of the {saved.numel()} values it saved are 0"
    return None


INFINITE_DERIVATIVE = LOGS | ROOTS | DIVISIONS | POWERS | {"rdiv", "rpow"}


def _with_inner_nodes(nodes: dict[object, _Operation]) -> dict[object, _Operation]:
    """The traced operations' autograd nodes and the nodes inside them: an operation written
    in C++ (a fused RNN, say) makes several nodes, and the one its result holds leads to the
    others; each is owned by the operation whose node first leads to it. Weights' gradient
    accumulators are left out: they pass a gradient on, they make none."""
    owned = dict(nodes)
    for node, operation in nodes.items():
        stack = [node]
        while stack:
            current = stack.pop()
            for following, _ in getattr(current, "next_functions", ()):
                if following is None or following in owned:
                    continue
                if type(following).__name__ == "AccumulateGrad":
                    continue
                owned[following] = operation
                stack.append(following)
    return owned


class _Backward:
    """Hooks on the recorded autograd nodes: the first whose result is not finite, and why
    (what it received, or what it saved for its derivative)."""

    def __init__(self, nodes: dict[object, _Operation]) -> None:
        self.origin: Origin | None = None
        self.largest: Peak | None = None
        self.handles = [node.register_hook(self._hook(node, op)) for node, op in nodes.items()]

    def _hook(self, node: object, operation: _Operation) -> Callable:
        def hook(grad_inputs, grad_outputs):
            produced = [g for g in grad_inputs if _floating(g)]
            magnitudes = [_magnitude(g) for g in produced]
            for magnitude in magnitudes:
                if math.isfinite(magnitude) and (
                    self.largest is None or magnitude > self.largest.value
                ):
                    self.largest = Peak(magnitude, operation.module, operation.op)
            if self.origin is not None or all(math.isfinite(m) for m in magnitudes):
                return
            bad = next(g for g, m in zip(produced, magnitudes, strict=True) if not math.isfinite(m))
            received = [g for g in grad_outputs if _floating(g)]
            cause, detail = _backward_cause(node, operation, received)
            self.origin = _origin("backward", operation, _kind(bad), cause, detail)

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _backward_cause(node: object, operation: _Operation, received: list[Tensor]) -> tuple[str, str]:
    """Why a node's gradient is not finite: its forward value was not; the gradient it
    received was not; its derivative is infinite where what it saved is 0; or an overflow."""
    if not operation.finite:
        return (
            "follows-forward",
            f"its forward result was already non-finite, and the derivative of {operation.op} "
            "reads it",
        )
    if any(not math.isfinite(_magnitude(g)) for g in received):
        return "nonfinite-input", "the gradient it received already held NaN or Inf"
    if operation.op in INFINITE_DERIVATIVE:
        zeros = _saved_zeros(node)
        if zeros is not None:
            return (
                "infinite-derivative",
                f"the derivative of {operation.op} is infinite at 0: {zeros}",
            )
    largest = max((_magnitude(g) for g in received), default=0.0)
    return "overflow", f"the gradient it received reaches {_number(largest)}"


def trace_numerics(model: nn.Module, probe: Probe, cells: tuple[str, ...] = ()) -> NumericsTrace:
    """One forward and backward pass of ``model`` on ``probe`` (the projection loss), traced
    as the module's docstring says; ``cells`` are the modules called once per time step."""
    names = {id(t): name for name, t in [*model.named_parameters(), *model.named_buffers()]}
    names[id(probe.inputs)] = PROBE_INPUT
    tracer = _Tracer(names, cells)
    inputs = probe.inputs
    with _hooked(model, tracer), tracer:
        output = probe.call(model)
    loss = projection_loss(output, probe)  # gradscope's own code: not traced
    out_leaves = [leaf for leaf in tree_flatten(output)[0] if _floating(leaf)]
    trace = NumericsTrace(
        output_finite=all(math.isfinite(_magnitude(leaf)) for leaf in out_leaves)
        and math.isfinite(float(loss.detach())),
        largest_activation=tracer.largest,
    )
    if not trace.output_finite:
        trace.forward = tracer.origin_of([*out_leaves, loss]) or _unseen("forward", model, loss)
    if not loss.requires_grad:
        return trace
    leaves = [p for p in model.parameters() if p.requires_grad]
    if inputs.requires_grad:
        leaves.append(inputs)
    backward, grads = _run_backward(loss, leaves, tracer.nodes)
    trace.largest_gradient = backward.largest
    if any(not math.isfinite(_magnitude(g)) for g in grads if _floating(g)):
        # again, with the nodes inside C++ operations hooked too: the origin may be one
        backward, _ = _run_backward(loss, leaves, _with_inner_nodes(tracer.nodes))
        trace.backward = backward.origin or _unseen("backward", model, loss)
    return trace


def _run_backward(
    loss: Tensor, leaves: list[Tensor], nodes: dict[object, _Operation]
) -> tuple[_Backward, tuple]:
    """One backward pass (the graph kept) with ``nodes`` hooked."""
    backward = _Backward(nodes)
    try:
        grads = torch.autograd.grad(loss, leaves, allow_unused=True, retain_graph=True)
    finally:
        backward.remove()
    return backward, grads


def _unseen(direction: str, model: nn.Module, loss: Tensor) -> Origin:
    """The origin of a non-finite value no traced operation made (TorchScript, compiled code,
    a C++ extension): the whole model, said as such."""
    return Origin(
        direction=direction,
        module="",
        module_type=type(model).__name__,
        op="forward",
        value="NaN"
        if direction == "forward" and bool(torch.isnan(loss.detach()))
        else "NaN or Inf",
        cause="unseen",
        detail="made inside code gradscope cannot trace (TorchScript, a compiled or C++ "
        "operation): run the model eagerly to find the operation",
    )


def merged_traces(traces: list[tuple[str, NumericsTrace]]) -> NumericsTrace | None:
    """Several parts' traces as one: the first part's origin in each direction (its module
    path under the part's), the largest values over all of them."""
    if not traces:
        return None
    merged = NumericsTrace()
    for name, trace in traces:
        merged.output_finite = merged.output_finite and trace.output_finite
        for direction in ("forward", "backward"):
            origin = getattr(trace, direction)
            if origin is not None and getattr(merged, direction) is None:
                origin.module = ".".join(p for p in (name, origin.module) if p)
                setattr(merged, direction, origin)
        for kind in ("largest_activation", "largest_gradient"):
            peak = getattr(trace, kind)
            if peak is not None:
                peak = Peak(peak.value, ".".join(p for p in (name, peak.module) if p), peak.op)
                current = getattr(merged, kind)
                if current is None or peak.value > current.value:
                    setattr(merged, kind, peak)
    return merged
