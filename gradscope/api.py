"""The Python API: ``gradscope.analyze(model_or_path, **options) -> Report``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gradscope import __version__
from gradscope.diagnosis import diagnose, with_horizons
from gradscope.report import Report
from gradscope.settings import Settings, parse_shape

Progress = Callable[[str], None]


def _quiet(message: str) -> None:
    """The default progress callback: say nothing."""


def analyze(
    model_or_path: Any,
    *,
    model: str | None = None,
    model_args: str | Mapping | None = None,
    trust: bool = False,
    progress: Progress = _quiet,
    **options: Any,
) -> Report:
    """Probe a model (an ``nn.Module`` or a checkpoint path) and diagnose its gradient flow.

    ``options`` are the fields of :class:`gradscope.settings.Settings` (``steps``, ``batch``,
    ``seed``, ``dtype``, ``probe``, ``input_shape``, ``horizon``, ``epsilon``, ``burn_in``,
    ``exponents``, ``spectrum_steps``, ``device``). A module object is copied, never changed.
    Raises :class:`gradscope.errors.GradscopeError` for unusable input.
    """
    import torch

    from gradscope.loading import load_model, resolve_device
    from gradscope.probe import make_probe
    from gradscope.recurrent.measure import measure_recurrent

    if isinstance(options.get("input_shape"), str):
        options["input_shape"] = parse_shape(options["input_shape"])
    elif options.get("input_shape") is not None:
        options["input_shape"] = tuple(options["input_shape"])
    if isinstance(options.get("cells"), str):
        options["cells"] = (options["cells"],)
    elif options.get("cells") is not None:
        options["cells"] = tuple(options["cells"])
    if isinstance(model_or_path, Path):
        model_or_path = str(model_or_path)
    settings = Settings(**options)
    device = resolve_device(settings.device)
    progress("loading the model")
    loaded = load_model(model_or_path, model=model, model_args=model_args, trust=trust)
    module = loaded.module.to(device=device, dtype=getattr(torch, settings.dtype)).eval()
    module.requires_grad_(True)  # our own copy: gradients must reach every state
    probe = make_probe(module, settings, device)
    requested_horizon = settings.horizon
    settings = settings.for_steps(probe.steps, probe.batch)
    if probe.note:
        loaded.notes.append(probe.note)
    progress(f"probing {probe.steps} steps and measuring the recurrent cores")
    with torch.enable_grad():
        measured = measure_recurrent(module, probe, settings)
    cores = with_horizons(measured.cores, requested_horizon, probe.steps)
    status, cores, findings, fixes = diagnose(cores, settings.epsilon)
    settings_data = settings.to_dict() | {
        "input_shape": list(probe.inputs.shape),
        "loss": "seeded unit projection of the output at the last time step",
        "device": str(device),
        "spectrum_samples": {core.label: core.jacobian["samples"] for core in cores},
    }
    return Report(
        status=status,
        settings=settings_data,
        model=loaded.describe(),
        gradscope_version=__version__,
        input_grad_norm=measured.input_grad_norm,
        recurrent=cores,
        findings=findings,
        fixes=fixes,
    )
