"""The views: each measures one kind of gradient path and hands back numbers and notes.

- :class:`RecurrentView`: every recurrent core of a model that runs, over time.
- :class:`DepthView`: the model's blocks over depth (beside recurrent cores, or alone).
- :class:`PartsView`: recurrent parts rebuilt from weights (a state dict without its class, a
  saved program), each on its own, plus the whole program's input gradient where it runs.
"""

from __future__ import annotations

import copy
import dataclasses
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from gradscope.errors import GradscopeError, first_line
from gradscope.loading import LoadedModel
from gradscope.loading.streaming import UNTAKEN_GRADIENTS
from gradscope.options import DEFAULT_DTYPE, AnalysisOptions
from gradscope.origin import NumericsTrace
from gradscope.probe import Layout, Probe, make_probe, probe_for
from gradscope.report import (
    DepthLayer,
    DepthStack,
    Note,
    RecurrentCore,
    SequenceGradient,
    WeightFault,
)
from gradscope.taxonomy import is_kind, recurrent_modules

#: Kinds of module that mix time, as the sequence view's fixes name them.
TIME_MIXERS = ("Conv1d", "Conv2d", "MultiheadAttention")


@dataclass
class Subject:
    """What the views measure: the loaded model, its prepared module, the probe, the device."""

    loaded: LoadedModel
    module: nn.Module | None
    options: AnalysisOptions
    device: torch.device
    probe: Probe | None = None
    #: Parameters and buffers that held NaN or Inf when loaded.
    faults: list[WeightFault] = field(default_factory=list)
    #: The dtype of the traced pass (``--dtype``; the views run in float32 when it is low).
    traced_dtype: str = DEFAULT_DTYPE


@dataclass
class Measured:
    """What one view found; ``steps``, ``batch`` and ``input_shape`` of the probe it ran.

    ``modules`` maps a view name to the modules it measured (for coverage); ``used`` holds the
    ids of the parameters the model's output depended on, and ``units`` the modules the depth
    view looked for, where the view knows them; ``recurrences`` are (module, what) of the
    recurrences found by behaviour (``""``: the model's own forward).
    """

    cores: list[RecurrentCore] = field(default_factory=list)
    input_grad_norm: list[float] | None = None
    stack: DepthStack | None = None
    layers: list[DepthLayer] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    length: tuple[int, int, list[int]] | None = None
    modules: dict[str, list[str]] = field(default_factory=dict)
    used: set[int] | None = None
    units: list[str] = field(default_factory=list)
    recurrences: list[tuple[str, str]] = field(default_factory=list)
    sequence: SequenceGradient | None = None
    trace: NumericsTrace | None = None


class View(Protocol):
    """One way of following the gradient through a model."""

    def starting(self, subject: Subject) -> str:
        """What the view is about to do, for the progress line."""
        ...

    def measure(self, subject: Subject, earlier: list[Measured]) -> Measured:
        """Measure ``subject``; ``earlier`` holds what the views before this one found."""
        ...


def detect_cells(module: nn.Module, probe: Probe) -> list[tuple[str, int]] | None:
    """The modules the model loops as recurrent cells on ``probe`` that gradscope can step,
    with how often each was called; None when the model does not run on the probe."""
    from gradscope.depth.recurrences import steppable_cells
    from gradscope.probe.calls import every_call
    from gradscope.probe.trial import trial_run

    with every_call(module) as log:
        ran = trial_run(lambda: probe.call(module))
    return steppable_cells(module, log) if ran else None


def has_recurrence(module: nn.Module, options: AnalysisOptions) -> bool:
    """Whether the model has a recurrent module or cell to follow over time."""
    return bool(recurrent_modules(module, scripted=False) or options.cells)


class NumericsView:
    """One traced forward and backward pass, in the analysis dtype (float16 and bfloat16
    included): where NaN or Inf first appear, and the largest activation and gradient."""

    def starting(self, subject: Subject) -> str:
        return f"tracing one forward and backward pass in {subject.traced_dtype} for NaN and Inf"

    def measure(self, subject: Subject, earlier: list[Measured]) -> Measured:
        assert subject.module is not None and subject.probe is not None
        cast = subject.traced_dtype != subject.options.dtype and not subject.loaded.fixed_dtype
        notes = [Note("numerics", UNTAKEN_GRADIENTS)] if subject.loaded.stream else []
        try:
            trace = _traced(subject, subject.module, subject.probe, cast, subject.options.cells)
        except Exception as error:  # the model's own code, or a kernel the dtype lacks here
            return Measured(notes=[_not_traced(subject, "the forward and backward pass", error)])
        return Measured(trace=trace, notes=notes)


def _traced(
    subject: Subject, module: nn.Module, probe: Probe, cast: bool, cells: tuple[str, ...] = ()
) -> NumericsTrace:
    """The traced pass (:func:`gradscope.origin.trace_numerics`) of ``module`` on ``probe``,
    on copies in the traced dtype when ``cast``; the random state kept as it was, so that a
    model that draws noise draws the same for the views."""
    from gradscope.origin import trace_numerics

    dtype = getattr(torch, subject.traced_dtype)
    stream = subject.loaded.stream if module is subject.module else None
    with ExitStack() as stack:
        if cast and stream is not None:  # no copy of the weights read as it runs
            module, probe = stack.enter_context(stream.cast(module, dtype)), probe.cast(dtype)
        elif cast:
            module, probe = copy.deepcopy(module).to(dtype), probe.cast(dtype)
        cuda = [subject.device] if subject.device.type == "cuda" else []
        with torch.enable_grad(), torch.random.fork_rng(devices=cuda):
            return trace_numerics(module, probe, cells)


def _not_traced(subject: Subject, what: str, error: Exception) -> Note:
    """Why the traced pass did not run, as a note."""
    reason = f"{type(error).__name__}: {first_line(error)}"
    return Note(
        "numerics",
        f"{what} in {subject.traced_dtype} on {subject.device} did not run ({reason}): NaN/Inf "
        "origins and the largest values were not traced",
    )


class RecurrentView:
    """Every recurrent core of the model: one probe run, one backward pass."""

    def starting(self, subject: Subject) -> str:
        return f"probing {subject.options.steps} steps and measuring the recurrent cores"

    def __init__(self, detected: tuple[str, ...] = ()) -> None:
        self.detected = detected

    def measure(self, subject: Subject, earlier: list[Measured]) -> Measured:
        from gradscope.recurrent.measure import measure_recurrent

        assert subject.module is not None and subject.probe is not None
        try:
            with torch.enable_grad():
                measured = measure_recurrent(subject.module, subject.probe, subject.options)
        except GradscopeError as error:
            if not self.detected:
                raise
            # a detected cell that cannot be stepped is left to coverage, which names it
            detected = ", ".join(self.detected)
            return Measured(notes=[Note("recurrent", f"detected {detected} not stepped: {error}")])
        names = list(dict.fromkeys(core.name for core in measured.cores))
        return Measured(
            measured.cores,
            measured.input_grad_norm,
            notes=[Note("recurrent", text) for text in measured.notes],
            modules={"recurrent": names},
        )


class DepthView:
    """The blocks of the model over depth; beside recurrent cores a failure is only a note."""

    def starting(self, subject: Subject) -> str:
        return "measuring the gradient through the model's blocks"

    def measure(self, subject: Subject, earlier: list[Measured]) -> Measured:
        from gradscope.depth.measure import measure_depth

        assert subject.module is not None and subject.probe is not None
        beside_cores = any(result.cores for result in earlier)
        options = subject.options
        try:
            with torch.enable_grad():
                depth = measure_depth(subject.module, subject.probe, options, beside_cores)
        except GradscopeError:
            if beside_cores:
                return Measured()
            raise
        except Exception as error:
            message = f"depth view not measured ({type(error).__name__}: {first_line(error)})"
            if beside_cores:
                return Measured(notes=[Note("depth", message)])
            other = "--depth blocks" if options.granularity == "leaves" else "--depth leaves"
            raise GradscopeError(f"{message}; try {other}") from None
        if depth.stack is not None:
            modules = {"depth": depth.block_modules}
        else:  # beside cores, a short feed-forward part is in the gradients measured end to end
            modules = {"end-to-end": depth.block_modules} if beside_cores else {}
        return Measured(
            stack=depth.stack,
            layers=depth.layers,
            modules=modules,
            used=depth.used,
            units=depth.units,
            recurrences=[(r.module, r.what) for r in depth.recurrences],
        )


class SequenceView:
    """The input gradient by lag from the step the loss reads, for a probe with a time axis:
    the per-step input gradient the recurrent view took, where it took it at the last step;
    else one run and one backward pass of its own. A model that does not mix time steps has
    no reach to judge unless ``--horizon`` asks (``horizon_given``)."""

    def __init__(self, horizon_given: bool = False) -> None:
        self.horizon_given = horizon_given

    def starting(self, subject: Subject) -> str:
        return "measuring the input gradient over the sequence"

    def measure(self, subject: Subject, earlier: list[Measured]) -> Measured:
        from gradscope.sequence import by_lag, measure_sequence

        probe, options = subject.probe, subject.options
        measured = next((r.input_grad_norm for r in earlier if r.input_grad_norm), None)
        mixers = _mixers(subject.module, earlier)
        if measured is not None and options.loss_at == "last":
            view = SequenceGradient(by_lag(measured), "last", len(measured), mixers)
            return Measured(sequence=view)
        if subject.module is None or probe is None or probe.time_axis is None:
            return Measured()
        try:
            with torch.enable_grad():
                found = measure_sequence(subject.module, probe, options.loss_at)
        except GradscopeError as error:
            if options.loss_at != "last":
                raise
            return Measured(notes=[Note("sequence", f"sequence view not measured: {error}")])
        if not self.horizon_given and not any(found.grad_norm_by_lag[1:]):
            return Measured(
                notes=[
                    Note(
                        "sequence",
                        "the model does not mix time steps: the loss at a step reads that "
                        "step's input alone, so there is no reach over time to judge (pass "
                        "--horizon to judge it anyway)",
                    )
                ]
            )
        view = SequenceGradient(found.grad_norm_by_lag, found.loss_at, found.steps, mixers)
        gradient = by_lag(found.grad_norm_by_lag) if found.loss_at == "last" else None
        if gradient is not None and len(gradient) != probe.steps:
            gradient = None
        return Measured(input_grad_norm=gradient, sequence=view)


def _mixers(module: nn.Module | None, earlier: list[Measured]) -> list[str]:
    """What mixes time in the model: recurrent cores, convolutions, attention, scans."""
    kinds = [core.cell for r in earlier for core in r.cores]
    if module is not None:
        kinds += [type(m).__name__ for m in module.modules() if is_kind(m, TIME_MIXERS)]
        kinds += [type(m).__name__ for _, m in recurrent_modules(module, scripted=False)]
    found = [what for r in earlier for _, what in r.recurrences]
    kinds += ["scan"] if any("scan" in what for what in found) else []
    kinds += ["loop"] if any("loops over time" in what for what in found) else []
    return list(dict.fromkeys(kinds))


class PartsView:
    """Cores rebuilt from weights, each on its own; the whole program's input gradient."""

    def starting(self, subject: Subject) -> str:
        return f"measuring {len(subject.loaded.parts or [])} rebuilt part(s)"

    def measure(self, subject: Subject, earlier: list[Measured]) -> Measured:
        from gradscope.recurrent.parts import measure_parts

        loaded, options, device = subject.loaded, subject.options, subject.device
        notes: list[Note] = []
        probe = None
        if loaded.module is None:
            unused = [f"--output-key {options.output_key}"] if options.output_key else []
            unused += [f"--cell {cell}" for cell in options.cells]
            if unused:
                notes.append(
                    Note(
                        "parts",
                        f"{', '.join(unused)} ignored: without the model's class only the "
                        "rebuilt recurrent parts run; pass --model to run the whole model",
                    )
                )
        else:
            try:
                probe = program_probe(loaded, options, device, notes)
            except GradscopeError as error:
                notes.append(Note("parts", f"input gradient not measured: {error}"))
        if probe is not None and not options.explicit_length:
            options = dataclasses.replace(options, steps=probe.steps, batch=probe.batch)
        options = options.with_length()
        parts = measure_parts(loaded.parts or [], options, device)
        notes += [Note("parts", text) for text in parts.notes]
        input_grad_norm = None
        if probe is not None:
            input_grad_norm, gradient_notes = _program_input_gradient(
                loaded, probe, device, (parts.steps, parts.batch)
            )
            notes += gradient_notes
        trace, trace_notes = _trace_parts(subject, options)
        return Measured(
            parts.cores,
            input_grad_norm,
            notes=[*notes, *trace_notes],
            length=(parts.steps, parts.batch, parts.input_shape),
            trace=trace,
        )


def _trace_parts(
    subject: Subject, options: AnalysisOptions
) -> tuple[NumericsTrace | None, list[Note]]:
    """Each rebuilt part traced on a probe of its own, in the traced dtype: the first part's
    origins (their module paths under the part's), the largest values over all of them."""
    from gradscope.origin import merged_traces

    traces = []
    for part in subject.loaded.parts or []:
        try:
            probe = make_probe(part.module, options, subject.device)
            traces.append((part.name, _traced(subject, part.module, probe, cast=True)))
        except Exception as error:  # a kernel the dtype lacks here, say
            return None, [_not_traced(subject, f"{part.name or '(model)'}'s pass", error)]
    return merged_traces(traces), []


def _program_input_gradient(
    loaded: LoadedModel, probe: Probe, device: torch.device, length: tuple[int, int]
) -> tuple[list[float] | None, list[Note]]:
    """The whole program's input gradient, or notes on why it was not measured; a note too
    when it ran another ``length`` (steps, batch) than the rebuilt cores."""
    from gradscope.recurrent.parts import whole_input_gradient

    pinned = (
        _pinned_device(loaded, device) if loaded.checkpoint_kind == "exported-program" else None
    )
    if pinned:
        return None, [
            Note(
                "parts",
                f"input gradient not measured: the exported program is pinned to {pinned}, "
                f"where it was exported; rerun with --device {pinned.split(':')[0]}",
            )
        ]
    notes = []
    input_grad_norm = None
    try:
        input_grad_norm = whole_input_gradient(loaded.module, probe)
    except GradscopeError as error:
        notes.append(Note("parts", f"input gradient not measured: {error}"))
    if input_grad_norm is None and not probe.inputs.requires_grad:
        notes.append(
            Note(
                "parts",
                "input gradient not measured: the program reads token ids, which have no "
                "gradient, and a saved program cannot be hooked at its embedding",
            )
        )
    if (probe.steps, probe.batch) != length:
        notes.append(
            Note(
                "parts",
                f"the whole program ran on input shape {tuple(probe.inputs.shape)} for the "
                f"input gradient; the rebuilt cores ran {length[0]} steps x batch {length[1]}",
            )
        )
    return input_grad_norm, notes


def program_probe(
    loaded: LoadedModel, options: AnalysisOptions, device: torch.device, notes: list[Note]
) -> Probe:
    """The probe of a whole saved program; what it assumes is added to ``notes`` at once.

    An exported program is pinned to the shapes, dtype and device it was exported with: its
    probe is shaped as its example inputs (unless --input-shape or --probe say otherwise), in
    its own dtype. A TorchScript module says what it reads, as a module does.
    """
    module = loaded.module
    if loaded.checkpoint_kind != "exported-program":
        return make_probe(module, options, device)
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
    if dtype in (torch.float32, torch.float64) and dtype != getattr(torch, options.float_dtype):
        options = dataclasses.replace(options, dtype=str(dtype).removeprefix("torch."))
        notes.append(
            Note(
                "parts",
                "the exported program runs in its own dtype, "
                f"{options.float_dtype}, for the input gradient",
            )
        )
    example = loaded.example_inputs[0] if loaded.example_inputs else None
    first = loaded.parts[0]
    tokens = example is not None and not example.is_floating_point()
    layout = Layout(
        None if tokens else (first.module.input_size if example is None else example.shape[-1]),
        bool(getattr(first.module, "batch_first", True)),
        "the program's example input",
        vocab=int(example.max()) + 1 if tokens else None,
    )
    if example is not None and not options.input_shape and options.builtin_probe:
        options = dataclasses.replace(options, input_shape=tuple(example.shape))
    return probe_for(layout, options, device)


def _pinned_device(loaded: LoadedModel, device: torch.device) -> str | None:
    """The device an exported program was exported on, when it is not ``device``."""
    tensors = [*loaded.example_inputs, *loaded.module.parameters()]
    pinned = tensors[0].device if tensors else device
    return None if pinned.type == device.type else str(pinned)
