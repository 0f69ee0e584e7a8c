"""One analysis, stage by stage: load -> plan the probe -> run the views -> diagnose -> assemble.

Each stage returns its result and its notes as data; :func:`run` only wires them.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gradscope import __version__
from gradscope.coverage import module_coverage, parts_coverage
from gradscope.diagnosis import Diagnosis, diagnose
from gradscope.diagnosis.verdict import with_distances
from gradscope.errors import GradscopeError
from gradscope.fixes import build_fixes
from gradscope.loading import HF_KIND, LoadedModel, load_model, resolve_device
from gradscope.loading.huggingface import quiet_transformers
from gradscope.loading.streaming import NOT_COPIED
from gradscope.options import (
    DEFAULT_BATCH,
    DEFAULT_DEPTH_BATCH,
    DEFAULT_DTYPE,
    DEFAULT_STEPS,
    DEFAULT_TOKEN_BATCH,
    LOW_PRECISION,
    AnalysisOptions,
    LoadOptions,
)
from gradscope.origin import nonfinite_tensors, nonfinite_weights
from gradscope.precision import headroom
from gradscope.probe import Probe, input_layout, make_probe
from gradscope.progress import reporting_to
from gradscope.report import Coverage, Fix, Note, Numerics, RecurrentCore, Report, Settings
from gradscope.taxonomy import recurrent_modules
from gradscope.views import (
    DepthView,
    Measured,
    NumericsView,
    PartsView,
    RecurrentView,
    SequenceView,
    Subject,
    View,
    detect_cells,
    has_recurrence,
)

Progress = Callable[[str], None]


def quiet(message: str) -> None:
    """The default progress callback: say nothing."""


def load(source: Any, options: LoadOptions, analysis: AnalysisOptions) -> Subject:
    """Load the model and make it ours: the analysis dtype and device, eval mode, gradients on.

    An exported program keeps its own device, dtype and mode: it is pinned to them.
    """
    device = resolve_device(analysis.device)
    # placeholders for weights read as the model runs take no memory on the CPU only
    streams = options.stream and device.type == "cpu"
    loaded = load_model(source, dataclasses.replace(options, stream=streams))
    module, stream = loaded.module, loaded.stream
    if options.only and options.stream and not streams and loaded.checkpoint_kind == HF_KIND:
        loaded.notes.append(
            f"--only: the whole model was loaded, not streamed (placeholders for the weights "
            f"read as the model runs take no memory on the CPU only, not on {device.type})"
        )
    if module is not None and any(p.is_complex() for p in module.parameters()):
        raise GradscopeError(
            "the model has complex-valued weights; gradscope analyses real-valued models only"
        )
    faults = []
    if stream is not None:  # the weights as the file holds them, one at a time
        faults = nonfinite_tensors(stream.named_tensors(module))
    elif module is not None:
        faults = nonfinite_weights(module)
    elif loaded.weights is not None:
        faults = nonfinite_tensors(loaded.weights.items())
    traced = analysis.dtype or loaded.dtype or DEFAULT_DTYPE
    given = analysis.input_shape or analysis.input_shapes or not analysis.builtin_probe
    if loaded.input_shape and not given:  # the shape the model's config gives
        analysis = dataclasses.replace(analysis, input_shape=loaded.input_shape)
    if loaded.config_inputs and not loaded.config_fallback and not given:
        probe = config_probe(loaded, analysis)
        analysis = dataclasses.replace(analysis, probe=probe)
        loaded.notes.append(config_probe_note(probe))
    # the views' linear algebra needs float32 at least
    analysis = dataclasses.replace(analysis, dtype="float32" if traced in LOW_PRECISION else traced)
    if module is not None:
        if stream is not None:
            stream.place(module, device, getattr(torch, analysis.dtype))
        elif not loaded.fixed_dtype:
            module = module.to(device=device, dtype=getattr(torch, analysis.dtype)).eval()
        for parameter in module.parameters():  # our own copy: gradients must reach every state
            parameter.requires_grad_(True)
    return Subject(loaded, module, analysis, device, faults=faults, traced_dtype=traced)


def config_probe(loaded: LoadedModel, analysis: AnalysisOptions) -> dict[str, torch.Tensor]:
    """The inputs a model's config describes, seeded: token ids below its vocabulary size
    (as many steps as ``--steps`` asks, within the positions the config embeds), Gaussian
    features of the shape it gives."""
    steps = analysis.steps or min(DEFAULT_STEPS, loaded.max_steps or DEFAULT_STEPS)
    batch = analysis.batch or DEFAULT_TOKEN_BATCH
    generator = torch.Generator().manual_seed(analysis.seed)
    return {
        name: torch.randint(0, spec, (batch, steps), generator=generator)
        if isinstance(spec, int)
        else torch.randn((batch, *spec), generator=generator, dtype=torch.float64)
        for name, spec in (loaded.config_inputs or {}).items()
    }


def config_probe_note(probe: dict[str, torch.Tensor]) -> str:
    """What the probe built from the config holds."""
    parts = [
        f"{name} ({'×'.join(map(str, tensor.shape))}, "
        f"{'token ids' if not tensor.is_floating_point() else 'Gaussian'})"
        for name, tensor in probe.items()
    ]
    return f"the probe, from the model's config: {', '.join(parts)}, seeded"


@dataclass
class Plan:
    """The views to run on a subject, the probe they share, and what planning noted."""

    subject: Subject
    views: list[View]
    notes: list[Note] = field(default_factory=list)


def plan(subject: Subject) -> Plan:
    """Choose the views and build the probe: rebuilt parts probe themselves; a model that runs
    gets one probe for its recurrent cores (if any) and its blocks."""
    if subject.loaded.parts is not None:
        return Plan(subject, [PartsView()], _dtype_notes(subject))
    module, requested = subject.module, subject.options
    notes: list[Note] = []
    detected: tuple[str, ...] = ()
    detecting = requested.detect_cells and not requested.cells
    failure: GradscopeError | None = None
    try:
        options, probe = _probe(module, requested, subject.device)
    except GradscopeError as error:
        if not _shape_open(requested):
            raise
        failure, probe = error, None
        loaded = subject.loaded
        if loaded.config_inputs and loaded.config_fallback:  # the config says what it reads
            given = dataclasses.replace(requested, probe=config_probe(loaded, requested))
            options, probe = _probe(module, given, subject.device)
            requested = given
            notes.append(Note("probe", config_probe_note(given.probe)))
    found = detect_cells(module, probe) if probe is not None else None
    if found is None and _shape_open(requested):
        searched = _searched_probe(module, requested, subject.device)
        if searched is not None:
            requested, (options, probe), note = searched
            notes.append(Note("probe", note))
            found = detect_cells(module, probe)
    if probe is None:
        assert failure is not None
        raise GradscopeError(f"{failure} ({_tried(module)})") from None
    if _config_sequence(subject.loaded, probe):
        probe = _as_sequence(probe, batch_first=True)  # the steps its config gives
    if not detecting:
        found = []
    if detecting and not found and _may_loop_over_axis_0(module, requested, probe):
        flipped = _time_major(module, requested, subject.device)
        looped = detect_cells(module, flipped[1][1]) if flipped else None
        if looped:
            requested, (options, probe) = flipped
            found = looped
            notes.append(
                Note(
                    "probe",
                    "the model loops over the first axis of its input: the probe is "
                    f"time-major, shaped {tuple(probe.inputs.shape)} (--batch-first or "
                    "--time-major sets it)",
                )
            )
    if found:
        names = tuple(name for name, _ in found)
        try:
            cells_probed = _probe(
                module, dataclasses.replace(requested, cells=names), subject.device
            )
        except GradscopeError as error:  # not probed as cells: coverage will name them
            notes.append(Note("probe", f"detected {', '.join(names)} not stepped: {error}"))
        else:
            detected = names
            options, probe = cells_probed
            notes.append(Note("probe", _detected_note(module, found)))
    recurrent = has_recurrence(module, options)
    probed = dataclasses.replace(
        subject, options=options.for_steps(probe.steps, probe.batch), probe=probe
    )
    views: list[View] = [NumericsView()]
    views += [RecurrentView(detected)] if recurrent else []
    views.append(DepthView())
    if probe.time_axis is not None:
        views.append(SequenceView(requested.distance is not None))
    return Plan(probed, views, [*notes, *_probe_notes(probe, options), *_dtype_notes(subject)])


def _config_sequence(loaded: LoadedModel, probe: Probe) -> bool:
    """Whether the probe is the sequence a model's config describes: (batch, steps, features)
    as its config gives them (a forecaster's history), whatever the batch."""
    shape = loaded.input_shape
    return (
        loaded.sequence_input
        and shape is not None
        and tuple(probe.inputs.shape[1:]) == tuple(shape[1:])
    )


def _may_loop_over_axis_0(module: nn.Module, requested: AnalysisOptions, probe: Probe) -> bool:
    """Whether a model with no recurrent module, read batch-first by assumption, might loop
    over the first axis instead (a hand-written loop over ``x.size(0)``)."""
    return (
        probe.time_axis == 1
        and probe.batch_axis == 0
        and requested.batch_first is None
        and requested.builtin_probe
        and not requested.input_shapes
        and not recurrent_modules(module, scripted=False)
    )


def _time_major(
    module: nn.Module, requested: AnalysisOptions, device: torch.device
) -> tuple[AnalysisOptions, tuple[AnalysisOptions, Probe]] | None:
    """The options and probe of the same input read time-major, or None when it does not
    build."""
    shape = requested.input_shape
    if shape is not None and len(shape) == 3:
        shape = (shape[1], shape[0], shape[2])
    flipped = dataclasses.replace(requested, batch_first=False, input_shape=shape)
    try:
        options, probe = _probe(module, flipped, device)
    except GradscopeError:
        return None
    probe = _as_sequence(probe, batch_first=False)
    return (flipped, (options, probe)) if probe.time_axis == 0 else None


def _as_sequence(probe: Probe, batch_first: bool) -> Probe:
    """A three-axis probe read as a sequence, batch-first or time-major, where the layout
    read from the model's first module did not (that module sits inside the loop)."""
    if probe.inputs.dim() != 3 or probe.time_axis is not None:
        return probe
    return dataclasses.replace(
        probe, time_axis=1 if batch_first else 0, batch_axis=0 if batch_first else 1
    )


def _shape_open(options: AnalysisOptions) -> bool:
    """Whether the user left the input's shape to gradscope (no --input-shape, no --probe)."""
    return options.builtin_probe and not options.input_shape and not options.input_shapes


def _tried(module: nn.Module) -> str:
    """The widths a search by trial tried, in words."""
    from gradscope.probe.search import candidate_widths

    widths = candidate_widths(module)
    if not widths:
        return "no module or weight states a size to try"
    return (
        f"inputs {', '.join(map(str, widths))} wide were tried, as vectors and sequences: none ran"
    )


def _searched_probe(
    module: nn.Module, requested: AnalysisOptions, device: torch.device
) -> tuple[AnalysisOptions, tuple[AnalysisOptions, Probe], str] | None:
    """The options and probe of an input the model runs on, found by trial when the one read
    from its first module does not run it (:func:`gradscope.probe.search.runnable_shape`)."""
    from gradscope.probe.search import runnable_shape

    tried = runnable_shape(module, device, getattr(torch, requested.float_dtype))
    if tried is None and requested.float_dtype == "float64":
        single = copy.deepcopy(module).float()
        found = runnable_shape(single, device, torch.float32)
        if found is not None:
            kind, shape = found
            raise GradscopeError(
                f"the model runs on {kind} of {shape[1 if kind == 'channels' else -1]} "
                "features in float32 only: it makes float32 tensors of its own (a zero state, "
                "say); rerun with --dtype float32"
            )
    if tried is None:
        return None
    kind, trial = tried
    steps = requested.steps or DEFAULT_STEPS
    batch_first = requested.batch_first is not False
    if kind == "sequences":
        width = trial[-1]
        batch = requested.batch or DEFAULT_BATCH
        shape = (batch, steps, width) if batch_first else (steps, batch, width)
    elif kind == "channels":
        width = trial[1]
        batch = DEFAULT_BATCH if has_recurrence(module, requested) else DEFAULT_DEPTH_BATCH
        shape = (requested.batch or batch, width, steps)
    else:
        width = trial[-1]
        shape, batch_first = (requested.batch or DEFAULT_DEPTH_BATCH, width), True
    options = dataclasses.replace(requested, input_shape=shape)
    probed_options, probe = _probe(module, options, device)
    if kind != "channels":
        probe = _as_sequence(probe, batch_first)  # it ran on sequences: read them so
    note = (
        f"the input its first module reads does not run the model; it runs on {kind} of "
        f"{width} features, found by trial: the probe is shaped {shape} (--input-shape sets "
        "it)"
    )
    return options, (probed_options, probe), note


def _probe(
    module: nn.Module, options: AnalysisOptions, device: torch.device
) -> tuple[AnalysisOptions, Probe]:
    """The probe for ``module``: a model without recurrence gets a batch of 32 by default
    (2 when it reads token ids)."""
    if not has_recurrence(module, options) and options.batch is None:
        batch = DEFAULT_TOKEN_BATCH if _reads_tokens(module, options) else DEFAULT_DEPTH_BATCH
        options = dataclasses.replace(options, batch=batch)
    return options, make_probe(module, options, device)


def _reads_tokens(module: nn.Module, options: AnalysisOptions) -> bool:
    """Whether the model's first module reads token ids (an embedding), as far as its modules
    say; a probe the user gave decides for itself."""
    if not options.builtin_probe or options.input_shapes:
        return False
    try:
        layout = input_layout(module, options.batch_first, options.input_shape, options.cells)
    except GradscopeError:
        return False
    return layout.tokens


def _detected_note(module: nn.Module, found: list[tuple[str, int]]) -> str:
    cells = ", ".join(
        f"{name} ({type(module.get_submodule(name)).__name__}), called {calls} times"
        for name, calls in found
    )
    return (
        f"detected: {cells}; each call reads the state the one before gave, so it is stepped "
        "as a recurrent cell, what else it is passed held per step (--cell names one "
        "yourself, --no-detect-cells turns this off)"
    )


def _dtype_notes(subject: Subject) -> list[Note]:
    """What ran in which dtype, when the analysis dtype is too narrow for linear algebra."""
    if subject.traced_dtype == subject.options.dtype:
        return []
    return [
        Note(
            "probe",
            f"--dtype {subject.traced_dtype}: the traced forward and backward pass (where NaN "
            f"or Inf first appear, the largest values) ran in {subject.traced_dtype}; the "
            f"Jacobians, exponents and gradient norms in {subject.options.dtype}, which "
            f"{subject.traced_dtype} lacks the linear algebra for; its headroom row says where "
            "those gradients would underflow",
        )
    ]


def _probe_notes(probe: Probe, options: AnalysisOptions) -> list[Note]:
    notes = [Note("probe", probe.note)] if probe.note else []
    if options.steps is not None and probe.time_axis is None:
        notes.append(
            Note(
                "probe",
                f"--steps {options.steps} ignored: the model's input has no time axis here; "
                "pass --input-shape B,T,F for a sequence",
            )
        )
    if probe.token_module is not None:
        notes.append(
            Note(
                "probe",
                f"the probe is token ids; input_grad_norm is taken at the output of "
                f"{probe.token_module}, since ids have no gradient",
            )
        )
    return notes


def measure(planned: Plan, progress: Progress) -> list[Measured]:
    """Run every view in turn; a model with neither cores nor a stack is refused."""
    subject = planned.subject
    results: list[Measured] = []
    for view in planned.views:
        progress(view.starting(subject))
        results.append(view.measure(subject, results))
    options = subject.options
    if options.only and not any(r.cores or r.stack for r in results):
        raise GradscopeError(
            f"--only {' '.join(options.only)} selects none of the model's recurrent modules "
            f"({', '.join(_recurrent_names(subject)) or 'none'}) and no run of 3 or more blocks: "
            "give a module path or a glob such as 'encoder.*' or 'layers.1*'"
        )
    if subject.loaded.parts is None and not any(r.cores or r.stack or r.sequence for r in results):
        hidden = [found for r in results for found in r.recurrences]
        if hidden:
            where, what = hidden[0]
            raise GradscopeError(
                f"the model has no recurrent module gradscope can step and fewer than 3 "
                f"blocks, but {where or 'its forward'} {what}; name the module that computes "
                "one step with --cell"
            )
        raise GradscopeError(
            "the model has no recurrent module and fewer than 3 blocks to follow the "
            f"gradient through{_no_reach(subject)}; name a custom recurrent cell with --cell, "
            "pass --input-shape B,T,F if it reads sequences, or --depth leaves"
        )
    return results


def _recurrent_names(subject: Subject) -> list[str]:
    """The recurrent modules (or rebuilt parts) of the subject, by path."""
    if subject.loaded.parts is not None:
        return [part.name or "(model)" for part in subject.loaded.parts]
    if subject.module is None:
        return []
    found = recurrent_modules(subject.module, scripted=False)
    return [path or "(model)" for path, _ in found]


def _no_reach(subject: Subject) -> str:
    """Why a probe with a time axis gave no sequence view, in a clause."""
    probe = subject.probe
    if probe is None or probe.time_axis is None:
        return ""
    return ", and its output at the step the loss reads depends on no other step of its input"


def cover(planned: Plan, results: list[Measured]) -> Coverage:
    """Which modules with parameters the views measured, and why the others were not."""
    loaded = planned.subject.loaded
    if loaded.parts is not None:
        sizes = {
            part.name or "(model)": sum(p.numel() for p in part.module.parameters())
            for part in loaded.parts
        }
        total = loaded.parameters or sum(p.numel() for p in loaded.module.parameters())
        return parts_coverage(sizes, total, loaded.not_analysed)
    views: dict[str, list[str]] = {}
    for result in results:
        for view, modules in result.modules.items():
            views[view] = list(dict.fromkeys([*views.get(view, []), *modules]))
    used = next((r.used for r in results if r.used is not None), None)
    stream = planned.subject.loaded.stream
    if used is not None and stream is not None:
        used = used | stream.reached_parameters()
    units = next((r.units for r in results if r.units), [])
    recurrences = [found for r in results for found in r.recurrences]
    options = planned.subject.options
    selects = options.selects if options.only else None
    return module_coverage(planned.subject.module, views, used, units, recurrences, selects)


def judge(
    results: list[Measured],
    options: AnalysisOptions,
    steps: int,
    coverage: Coverage,
    numerics: Numerics | None = None,
) -> Diagnosis:
    """Each core's distance (``--horizon``, else the probe length; at most the steps a core
    ran when it ran fewer than the probe), then the verdict."""
    cores = with_distances([c for r in results for c in r.cores], options.distance, steps)
    stack = next((r for r in results if r.stack is not None), None)
    sequence = next((r.sequence for r in results if r.sequence is not None), None)
    return diagnose(
        cores,
        options.epsilon,
        stack.stack if stack else None,
        stack.layers if stack else [],
        coverage,
        sequence,
        options.distance,
        numerics,
    )


def account(subject: Subject, results: list[Measured]) -> Numerics:
    """The numerics: weights that held NaN or Inf, what the traced pass found, and how much
    of each dtype's range the largest values and every part's gradient use."""
    trace = next((r.trace for r in results if r.trace is not None), None)
    by_lag = {core.label: core.grad_norm_by_lag for r in results for core in r.cores}
    stack = next((r for r in results if r.stack is not None), None)
    if stack is not None and stack.layers:
        by_lag["depth"] = [layer.grad_norm for layer in reversed(stack.layers)]
    sequence = next((r.sequence for r in results if r.sequence is not None), None)
    if sequence is not None and sequence.grad_norm_by_lag:
        by_lag["sequence"] = sequence.grad_norm_by_lag
    return Numerics(
        dtype=subject.traced_dtype,
        nonfinite_weights=subject.faults,
        forward=trace.forward if trace else None,
        backward=trace.backward if trace else None,
        output_finite=trace.output_finite if trace else True,
        largest_activation=trace.largest_activation if trace else None,
        largest_gradient=trace.largest_gradient if trace else None,
        headroom=headroom(
            trace.largest_activation if trace else None,
            trace.largest_gradient if trace else None,
            by_lag,
        ),
        traced=trace is not None,
    )


def assemble(
    planned: Plan,
    results: list[Measured],
    diagnosis: Diagnosis,
    requested: AnalysisOptions,
    length: tuple[int, int, list[int]],
) -> Report:
    """The report: settings as they ran, the model as loaded, and the judged numbers."""
    subject = planned.subject
    steps, batch, shape = length
    options = requested.for_steps(steps, batch)
    cores = diagnosis.cores
    notes = [*planned.notes, *(note for result in results for note in result.notes)]
    input_grad_norm = next(
        (r.input_grad_norm for r in results if r.input_grad_norm is not None), None
    )
    return Report(
        status=diagnosis.status,
        settings=_settings(
            dataclasses.replace(options, dtype=subject.traced_dtype),
            subject.device,
            shape,
            cores,
            subject.probe.shapes() if subject.probe is not None else {},
            diagnosis.sequence is not None,
        ),
        model=subject.loaded.describe([note.text for note in notes]),
        gradscope_version=__version__,
        input_grad_norm=input_grad_norm,
        sequence=diagnosis.sequence,
        recurrent=cores,
        layers=diagnosis.layers,
        stack=diagnosis.stack,
        findings=diagnosis.findings,
        fixes=_what_if(
            planned, diagnosis, build_fixes(diagnosis, options.epsilon), requested, steps
        ),
        coverage=diagnosis.coverage,
        numerics=diagnosis.numerics,
    )


def _what_if(
    planned: Plan,
    diagnosis: Diagnosis,
    fixes: list[Fix],
    requested: AnalysisOptions,
    steps: int,
) -> list[Fix]:
    """The fixes with their effect measured on a copy of the model (or of the parts rebuilt
    from its weights) where gradscope can apply them (``--what-if``), in order of benefit."""
    from gradscope.whatif import measure_fixes, on_model, on_parts

    subject = planned.subject
    if not requested.what_if:
        return fixes
    if subject.loaded.stream is not None:
        return [dataclasses.replace(fix, measured=f"not measured: {NOT_COPIED}") for fix in fixes]
    if subject.loaded.parts is not None:
        remeasure = on_parts(subject.loaded.parts, subject.options, subject.device, steps)
    elif subject.module is not None and subject.probe is not None:
        remeasure = on_model(subject.module, subject.probe, subject.options)
    else:
        return fixes
    return measure_fixes(fixes, diagnosis, remeasure, requested)


def _settings(
    options: AnalysisOptions,
    device: torch.device,
    shape: list[int],
    cores: list[RecurrentCore],
    inputs: dict[str, list[int]],
    sequence: bool = False,
) -> Settings:
    """The settings as they ran: the probe's shape, and no time axis for a stack alone (a
    sequence view has one, but no burn-in)."""
    over_time = bool(cores) or sequence
    return Settings(
        steps=options.steps if over_time else None,
        batch=options.batch,
        seed=options.seed,
        dtype=options.dtype,
        probe=options.probe if isinstance(options.probe, str) else "tensor",
        input_shape=shape,
        inputs=inputs,
        batch_first=options.batch_first,
        distance=options.distance if over_time else None,
        epsilon=options.epsilon,
        burn_in=options.burn_in if cores else None,
        exponents=options.exponents,
        spectrum_steps=options.spectrum_steps,
        device=str(device),
        output_key=options.output_key,
        cells=list(options.cells),
        granularity=options.granularity,
        chi_probes=options.chi_probes,
        power_iterations=options.power_iterations,
        loss="seeded unit projection of the output" + (" at the last time step" if cores else ""),
        loss_at=options.loss_at,
        spectrum_samples={core.label: core.jacobian.samples for core in cores},
    )


def _length(planned: Plan, results: list[Measured]) -> tuple[int, int, list[int]]:
    """(steps, batch, input shape) of the probe the views ran."""
    probe = planned.subject.probe
    if probe is not None:
        return probe.steps, probe.batch, list(probe.inputs.shape)
    return next(r.length for r in results if r.length is not None)


def run(
    source: str | nn.Module,
    load_options: LoadOptions,
    options: AnalysisOptions,
    progress: Progress = quiet,
) -> Report:
    """The whole analysis of ``source`` (a checkpoint path or a module)."""
    with without_internal_deprecations(), reporting_to(progress):
        progress("loading the model")
        subject = load(source, load_options, options)
        with quiet_transformers():  # a Hugging Face model's warnings as it runs
            planned = plan(subject)
            results = measure(planned, progress)
            length = _length(planned, results)
            numerics = account(planned.subject, results)
            diagnosis = judge(results, options, length[0], cover(planned, results), numerics)
            return assemble(planned, results, diagnosis, options, length)


#: Deprecations PyTorch raises inside its own code as gradscope calls it (torch.func's
#: forward mode scripts a helper): not the user's to act on, and an error under -W error.
INTERNAL_DEPRECATIONS = r".*`torch\.jit\.script` is deprecated"


@contextmanager
def without_internal_deprecations() -> Iterator[None]:
    """Keep PyTorch's warnings about its own internals out of the user's output."""
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", message=INTERNAL_DEPRECATIONS, category=category)
        yield
