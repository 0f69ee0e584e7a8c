"""The Python API: ``gradscope.analyze(model_or_path, **options) -> Report``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gradscope import __version__
from gradscope.diagnosis import diagnose
from gradscope.diagnosis.verdict import with_horizons
from gradscope.errors import GradscopeError, first_line
from gradscope.fixes import build_fixes
from gradscope.report import Report
from gradscope.settings import BUILTIN_PROBES, DEFAULT_DEPTH_BATCH, Settings, parse_shape

Progress = Callable[[str], None]


def _quiet(message: str) -> None:
    """The default progress callback: say nothing."""


def _settings(options: dict[str, Any]) -> Settings:
    if isinstance(options.get("input_shape"), str):
        options["input_shape"] = parse_shape(options["input_shape"])
    elif options.get("input_shape") is not None:
        options["input_shape"] = tuple(options["input_shape"])
    if isinstance(options.get("cells"), str):
        options["cells"] = (options["cells"],)
    elif options.get("cells") is not None:
        options["cells"] = tuple(options["cells"])
    return Settings(**options)


def _program_probe(loaded, settings: Settings, device):
    """The probe of a whole saved program.

    An exported program is pinned to the shapes, dtype and device it was exported with: its
    probe is shaped as its example inputs (unless --input-shape or --probe say otherwise), in
    its own dtype. A TorchScript module says what it reads, as a module does.
    """
    import torch

    from gradscope.probe import Layout, make_probe, probe_for

    module = loaded.module
    if loaded.format != "exported-program":
        return make_probe(module, settings, device)
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
    if dtype in (torch.float32, torch.float64) and dtype != getattr(torch, settings.dtype):
        settings = dataclasses.replace(settings, dtype=str(dtype).removeprefix("torch."))
        loaded.notes.append(
            f"the exported program runs in its own dtype, {settings.dtype}, for the input gradient"
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
    if example is not None and not settings.input_shape and settings.probe in BUILTIN_PROBES:
        settings = dataclasses.replace(settings, input_shape=tuple(example.shape))
    return probe_for(layout, settings, device)


def _pinned_device(loaded, device) -> str | None:
    """The device an exported program was exported on, when it is not ``device``."""
    tensors = [*loaded.example_inputs, *loaded.module.parameters()]
    pinned = tensors[0].device if tensors else device
    return None if pinned.type == device.type else str(pinned)


def _measure_parts(loaded, settings: Settings, device, explicit_length: bool, progress: Progress):
    """Cores rebuilt from weights, each on its own; the whole program's input gradient."""
    from gradscope.recurrent.parts import measure_parts, whole_input_gradient

    probe = None
    if loaded.module is None:
        unused = [f"--output-key {settings.output_key}"] if settings.output_key else []
        unused += [f"--cell {cell}" for cell in settings.cells]
        if unused:
            loaded.notes.append(
                f"{', '.join(unused)} ignored: without the model's class only the rebuilt "
                "recurrent parts run; pass --model to run the whole model"
            )
    else:
        try:
            probe = _program_probe(loaded, settings, device)
        except GradscopeError as error:
            loaded.notes.append(f"input gradient not measured: {error}")
    if probe is not None and not explicit_length:
        settings = dataclasses.replace(settings, steps=probe.steps, batch=probe.batch)
    progress(f"probing {settings.steps} steps; measuring {len(loaded.parts)} rebuilt part(s)")
    parts = measure_parts(loaded.parts, settings, device)
    loaded.notes.extend(parts.notes)
    input_grad_norm = None
    pinned = _pinned_device(loaded, device) if loaded.format == "exported-program" else None
    if pinned and probe is not None:
        loaded.notes.append(
            f"input gradient not measured: the exported program is pinned to {pinned}, where it "
            f"was exported; rerun with --device {pinned.split(':')[0]}"
        )
    elif probe is not None:
        try:
            input_grad_norm = whole_input_gradient(loaded.module, probe)
        except GradscopeError as error:
            loaded.notes.append(f"input gradient not measured: {error}")
        if input_grad_norm is None and not probe.inputs.requires_grad:
            loaded.notes.append(
                "input gradient not measured: the program reads token ids, which have no "
                "gradient, and a saved program cannot be hooked at its embedding"
            )
        if (probe.steps, probe.batch) != (parts.steps, parts.batch):
            loaded.notes.append(
                f"the whole program ran on input shape {tuple(probe.inputs.shape)} for the input "
                f"gradient; the rebuilt cores ran {parts.steps} steps x batch {parts.batch}"
            )
    return parts.cores, input_grad_norm, parts.steps, parts.batch, parts.input_shape


def _is_recurrent_model(module, settings: Settings) -> bool:
    from gradscope.taxonomy import recurrent_modules

    return bool(recurrent_modules(module, scripted=False) or settings.cells)


def _measure_depth(module, probe, settings: Settings, has_cores: bool, notes: list[str]):
    """The depth view; beside recurrent cores, a failure is a note rather than an error."""
    from gradscope.depth.measure import measure_depth

    try:
        return measure_depth(module, probe, settings)
    except GradscopeError:
        if has_cores:
            return None
        raise
    except Exception as error:
        message = f"depth view not measured ({type(error).__name__}: {first_line(error)})"
        if has_cores:
            notes.append(message)
            return None
        other = "--depth blocks" if settings.depth == "leaves" else "--depth leaves"
        raise GradscopeError(f"{message}; try {other}") from None


def analyze(
    model_or_path: Any,
    *,
    model: str | None = None,
    model_args: str | Mapping | None = None,
    trust: bool = False,
    allow_globals: tuple[str, ...] | list[str] = (),
    nonlinearity: str | None = None,
    progress: Progress = _quiet,
    **options: Any,
) -> Report:
    """Probe a model (an ``nn.Module`` or a checkpoint path) and diagnose its gradient flow.

    ``options`` are the fields of :class:`gradscope.settings.Settings` (``steps``, ``batch``,
    ``seed``, ``dtype``, ``probe``, ``input_shape``, ``horizon``, ``epsilon``, ``burn_in``,
    ``exponents``, ``spectrum_steps``, ``device``, ``output_key``, ``cells``). ``model``,
    ``model_args``, ``trust``, ``allow_globals`` and ``nonlinearity`` say how to load a file.
    A module object is copied, never changed. Raises
    :class:`gradscope.errors.GradscopeError` for unusable input.
    """
    import torch

    from gradscope.loading import load_model, resolve_device
    from gradscope.probe import make_probe
    from gradscope.recurrent.measure import measure_recurrent

    if nonlinearity not in (None, "tanh", "relu"):
        raise GradscopeError(f"--nonlinearity must be tanh or relu, not {nonlinearity!r}")
    if isinstance(model_or_path, Path):
        model_or_path = str(model_or_path)
    settings = _settings(options)
    device = resolve_device(settings.device)
    progress("loading the model")
    loaded = load_model(
        model_or_path,
        model=model,
        model_args=model_args,
        trust=trust,
        allow_globals=(allow_globals,) if isinstance(allow_globals, str) else tuple(allow_globals),
        nonlinearity=nonlinearity,
        batch_first=settings.batch_first,
    )
    dtype = getattr(torch, settings.dtype)
    if loaded.module is not None and any(p.is_complex() for p in loaded.module.parameters()):
        raise GradscopeError(
            "the model has complex-valued weights; gradscope analyses real-valued models only"
        )
    if loaded.module is not None:
        module = loaded.module
        if not loaded.fixed_dtype:  # an exported program is pinned to its device, dtype, mode
            module = module.to(device=device, dtype=dtype).eval()
        for parameter in module.parameters():  # our own copy: gradients must reach every state
            parameter.requires_grad_(True)
    requested_horizon = settings.horizon
    depth = None
    if loaded.parts is None:
        recurrent = _is_recurrent_model(module, settings)
        if "batch" not in options and not recurrent:
            settings = dataclasses.replace(settings, batch=DEFAULT_DEPTH_BATCH)
        probe = make_probe(module, settings, device)
        if probe.note:
            loaded.notes.append(probe.note)
        if probe.token_module is not None:
            loaded.notes.append(
                f"the probe is token ids; input_grad_norm is taken at the output of "
                f"{probe.token_module}, since ids have no gradient"
            )
        run_settings = settings.for_steps(probe.steps, probe.batch)
        cores, input_grad_norm = [], None
        if recurrent:
            progress(f"probing {probe.steps} steps and measuring the recurrent cores")
            with torch.enable_grad():
                measured = measure_recurrent(module, probe, run_settings)
            cores, input_grad_norm = measured.cores, measured.input_grad_norm
        progress("measuring the gradient through the model's blocks")
        with torch.enable_grad():
            depth = _measure_depth(module, probe, run_settings, bool(cores), loaded.notes)
        if not cores and depth is None:
            raise GradscopeError(
                "the model has no recurrent module and fewer than 3 blocks to follow the "
                "gradient through; name a custom recurrent cell with --cell, or --depth leaves"
            )
        steps, batch, shape = probe.steps, probe.batch, list(probe.inputs.shape)
    else:
        explicit_length = "steps" in options or "batch" in options
        cores, input_grad_norm, steps, batch, shape = _measure_parts(
            loaded, settings, device, explicit_length, progress
        )
    settings = settings.for_steps(steps, batch)
    cores = with_horizons(cores, requested_horizon, steps)
    stack, layers = depth if depth is not None else (None, [])
    diagnosis = diagnose(cores, settings.epsilon, stack, layers)
    fixes = build_fixes(diagnosis, settings.epsilon)
    status, cores, stack, findings = (
        diagnosis.status,
        diagnosis.cores,
        diagnosis.stack,
        diagnosis.findings,
    )
    over_time = {} if cores else dict.fromkeys(("steps", "horizon", "burn_in"))
    settings_data = (
        settings.to_dict()
        | over_time
        | {
            "input_shape": shape,
            "loss": "seeded unit projection of the output"
            + (" at the last time step" if cores else ""),
            "device": str(device),
            "spectrum_samples": {core.label: core.jacobian["samples"] for core in cores},
        }
    )
    return Report(
        status=status,
        settings=settings_data,
        model=loaded.describe(),
        gradscope_version=__version__,
        input_grad_norm=input_grad_norm,
        recurrent=cores,
        layers=layers,
        depth=stack,
        findings=findings,
        fixes=fixes,
    )
