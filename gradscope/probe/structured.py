"""Models called with several inputs: ``model(*probe)`` or ``model(**probe)``.

The inputs come from a ``--probe`` file (or object) holding a dict, tuple or list of tensors,
or from several ``--input-shape`` values (``4,50,8``, ``mask=4,50``). Which of them is the
main input (the one with the time axis, whose gradient is measured) is found by data flow:
the first one a module with weights reads on a trial run.
"""

from __future__ import annotations

import inspect
from contextlib import ExitStack

import torch
from torch import Tensor, nn

from gradscope.dataflow import depends_on
from gradscope.errors import GradscopeError
from gradscope.options import AnalysisOptions
from gradscope.probe.inputs import Probe, builtin_tensor
from gradscope.probe.layout import input_layout
from gradscope.probe.structure import map_tensors
from gradscope.probe.trial import trial_run
from gradscope.taxonomy import is_kind, is_recurrent, recurrent_modules


def several_inputs(options: AnalysisOptions, given: object = None) -> tuple | list | dict | None:
    """The inputs when the options give several, on the CPU: a tuple or list (positional), a
    dict (by name), or (args, kwargs) from several ``--input-shape`` values; else None.
    ``given`` is the probe the user gave, already read."""
    if options.input_shapes:
        if not options.builtin_probe:
            raise GradscopeError(
                "--input-shape and a --probe file both set the inputs: drop --input-shape"
            )
        generator = torch.Generator().manual_seed(options.seed)
        built = [
            (name, builtin_tensor(shape, options.probe, generator))
            for name, shape in options.input_shapes
        ]
        return (
            tuple(t for name, t in built if name is None),
            {name: t for name, t in built if name is not None},
        )
    return given if isinstance(given, (dict, list, tuple)) else None


def _prepared(value: object, dtype: torch.dtype, device: torch.device) -> object:
    """Every tensor in ``value`` on the device, floating point in the analysis dtype."""

    def prepare(tensor: Tensor) -> Tensor:
        tensor = tensor.detach().to(device)
        return tensor.to(dtype) if tensor.is_floating_point() else tensor

    return map_tensors(value, prepare)


def call_form(model: nn.Module, payload: object, from_shapes: bool) -> str:
    """How the model takes the payload (see :meth:`Probe.call`): a dict whose keys its
    forward names (or that takes ``**kwargs``) is spread as keywords, a dict or sequence
    given to a forward of one parameter is passed whole; else a sequence is spread."""
    if from_shapes:
        return "both"
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return "kwargs" if isinstance(payload, dict) else "args"
    kinds = {p.kind for p in parameters}
    names = {p.name for p in parameters}
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if isinstance(payload, dict):
        if inspect.Parameter.VAR_KEYWORD in kinds or set(payload) <= names:
            return "kwargs"
        return "one" if positional else "kwargs"
    if inspect.Parameter.VAR_POSITIONAL in kinds or len(positional) != 1 or len(payload) == 1:
        return "args"
    return "one"


def main_input(probe: Probe, model: nn.Module) -> tuple[Tensor, str | None]:
    """The main input, by data flow on a trial run, and the module that reads it.

    With a recurrent module: the input its first call depends on (through any code before
    it), shaped most like what it reads. Otherwise: the input a module with weights reads
    first. Failing both, the floating-point input with the most axes.
    """
    tensors = [t for _, t in probe.named_inputs()]
    if not tensors:
        raise GradscopeError(
            "the probe holds no tensor; give a dict, tuple or list of tensors, one per input"
        )
    floating = [t for t in tensors if t.is_floating_point()]
    read: list[tuple[Tensor, str]] = []
    recurrent_input: list[tuple[Tensor, str]] = []
    feeding: list[Tensor] = []
    with ExitStack() as trial:
        for name, module in model.named_modules():
            if is_recurrent(module) or next(module.parameters(recurse=False), None) is not None:

                def record(module: nn.Module, args: tuple, kwargs: dict, name: str = name) -> None:
                    values = (*args, *kwargs.values())
                    first = values[0] if values else None
                    if is_recurrent(module) and not recurrent_input and isinstance(first, Tensor):
                        recurrent_input.append((first, name))
                    match = None if read else _input_among(values, tensors)
                    if match is not None:
                        read.append((match, name))

                trial.callback(module.register_forward_pre_hook(record, with_kwargs=True).remove)
        for tensor in floating:  # traced, so that what the recurrence reads can be followed
            tensor.requires_grad_(True)
            trial.callback(tensor.requires_grad_, False)
        trial_run(lambda: probe.call(model), traced=True)
        if recurrent_input:
            seen = recurrent_input[0][0]
            depends = depends_on([seen])
            feeding = [t for t in floating if t is seen or depends(t)]
    if feeding:
        seen, name = recurrent_input[0]
        return max(feeding, key=lambda t: (t.dim() == seen.dim(), t.dim())), name
    if read:
        return read[0]
    return max(floating or tensors, key=lambda t: t.dim()), None


def _input_among(values: tuple, tensors: list[Tensor]) -> Tensor | None:
    """The probe input among a call's ``values``: the very tensor, else one with the same
    numbers (a copy or a cast of it)."""
    for same in (lambda v, t: v is t, _same):
        match = next((t for v in values for t in tensors if same(v, t)), None)
        if match is not None:
            return match
    return None


def _same(value: object, tensor: Tensor) -> bool:
    """Whether ``value`` holds the same numbers as ``tensor`` (a copy or a cast of it)."""
    if not isinstance(value, Tensor) or value.shape != tensor.shape or value.numel() == 0:
        return False
    return bool(torch.equal(value.detach().to(tensor.dtype), tensor))


def _axes(
    model: nn.Module, main: Tensor, options: AnalysisOptions
) -> tuple[int | None, int | None]:
    """(time axis, batch axis) of the main input: as the first recurrent module lays it out;
    otherwise (batch, steps) token ids, (batch, steps, features) or (batch, features)."""
    tokens = not main.is_floating_point()
    if recurrent_modules(model) or options.cells:
        layout = input_layout(model, options.batch_first, tuple(main.shape), options.cells)
        return layout.axes(main.dim(), tokens)
    sequence = main.dim() == (2 if tokens else 3)
    if not sequence:
        return None, 0
    return (0, 1) if options.batch_first is False else (1, 0)


def structured_probe(
    model: nn.Module, options: AnalysisOptions, device: torch.device, payload: object
) -> Probe:
    """The probe of a model called with several inputs; its main input found by data flow."""
    payload = _prepared(payload, getattr(torch, options.float_dtype), device)
    spread = call_form(model, payload, bool(options.input_shapes))
    kind = options.probe if options.input_shapes else options.probe_kind
    probe = Probe(
        inputs=torch.empty(0),  # the main input, found below
        time_axis=None,
        batch_axis=0,
        kind=kind,
        seed=options.seed,
        output_key=options.output_key,
        payload=payload,
        spread=spread,
    )
    main, reader = main_input(probe, model)
    probe.inputs = main
    probe.time_axis, probe.batch_axis = _axes(model, main, options)
    tokens = not main.is_floating_point()
    main.requires_grad_(not tokens)
    reader_module = model.get_submodule(reader) if reader is not None else None
    if tokens and reader_module is not None and is_kind(reader_module, ("Embedding",)):
        probe.token_module = reader
    where = next(name for name, t in probe.named_inputs() if t is main)
    call = {
        "args": "model(*probe)",
        "kwargs": "model(**probe)",
        "both": "model(*args, **kwargs)",
        "one": "model(probe)",
    }[spread]
    read = f", read first by {reader}" if reader else ""
    time = f"time on axis {probe.time_axis}" if probe.time_axis is not None else "no time axis"
    probe.note = f"the model is called as {call}; the main input is {where}{read} ({time})"
    others = [name for name, t in probe.named_inputs() if t is not main]
    if options.input_shapes and options.probe in ("gaussian", "zeros") and others:
        made = "N(0, 1) noise" if options.probe == "gaussian" else "zeros"
        probe.note += (
            f"; {', '.join(others)} {'is' if len(others) == 1 else 'are'} {made}, as "
            "--input-shape builds them: where they mean something (elapsed times, masks, "
            "lengths), give real ones in a --probe file"
        )
    return probe
