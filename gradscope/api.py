"""The Python API: ``gradscope.analyze(model_or_path, ...) -> Report``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gradscope.errors import GradscopeError
from gradscope.options import DEFAULTS, AnalysisOptions, LoadOptions, parse_spectrum_steps
from gradscope.report import Report


def analyze(
    model_or_path: Any,
    example_input: Any = None,
    *,
    model: str | None = None,
    model_args: str | Mapping[str, Any] | None = None,
    trust: bool = False,
    allow_globals: str | Sequence[str] = (),
    nonlinearity: str | None = None,
    steps: int | None = DEFAULTS.steps,
    batch: int | None = DEFAULTS.batch,
    seed: int = DEFAULTS.seed,
    dtype: str = DEFAULTS.dtype,
    probe: Any = DEFAULTS.probe,
    input_shape: str | Sequence[int] | Sequence[str | Sequence[int]] | None = (
        DEFAULTS.input_shape
    ),
    batch_first: bool | None = DEFAULTS.batch_first,
    horizon: int | None = DEFAULTS.distance,
    epsilon: float = DEFAULTS.epsilon,
    burn_in: int | None = DEFAULTS.burn_in,
    exponents: int = DEFAULTS.exponents,
    spectrum_steps: int | str = DEFAULTS.spectrum_steps,
    device: str = DEFAULTS.device,
    output_key: str | None = DEFAULTS.output_key,
    cells: str | Sequence[str] = DEFAULTS.cells,
    depth: str = DEFAULTS.granularity,
    chi_probes: int = DEFAULTS.chi_probes,
    power_iterations: int = DEFAULTS.power_iterations,
    detect_cells: bool = DEFAULTS.detect_cells,
    loss_at: int | str = DEFAULTS.loss_at,
    what_if: bool = DEFAULTS.what_if,
    max_memory: int | str | None = DEFAULTS.max_memory,
    only: str | Sequence[str] = DEFAULTS.only,
    stream: bool = True,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Probe a model and diagnose its gradient flow over time and over depth.

    ``model_or_path``: an ``nn.Module`` (copied, never changed) or a checkpoint path;
    ``example_input``: a tensor shaped as the model's input, used as the probe; a dict, tuple
    or list of tensors for a model called with several inputs.

    Loading: ``model`` (``package.module:Class`` or ``file.py:Class`` for a state dict),
    ``model_args`` (its keyword arguments, a dict or JSON), ``trust`` (load files that hold
    code), ``allow_globals`` (classes a weights-only load may build), ``nonlinearity`` (of
    vanilla RNNs rebuilt from weights).

    The probe: ``steps`` and ``batch`` (default 100 and 1; 32 for a model without recurrent
    modules), ``seed``, ``dtype`` (float64 or float32), ``probe`` (``gaussian``, ``zeros``,
    a tensor file or a tensor), ``input_shape`` (one shape, or several: ``["4,50,8",
    "mask=4,50"]``), ``batch_first``, ``output_key`` (which output the loss reads), ``cells``
    (module paths of custom recurrent cells), ``detect_cells`` (step the modules the model
    loops as recurrent cells), ``device``.

    Judging: ``horizon`` (the distance L to learn across; default each core's length),
    ``epsilon`` (a change by 1/epsilon within L fails), ``loss_at`` (the step the sequence
    view's loss reads: ``last``, ``all`` or a step number), ``what_if`` (apply each fix gradscope
    can to a copy and measure its effect). Over time: ``burn_in``,
    ``exponents``, ``spectrum_steps``; over depth: ``depth`` (``blocks``, ``leaves`` or N
    levels), ``chi_probes``, ``power_iterations``. ``max_memory``: bytes (or a size such as
    ``"2GB"``) for Jacobian work, which goes in chunks to stay within it. ``only``: module paths
    or globs of the recurrent modules or the run of blocks to measure (the rest are reported
    as left out); ``stream``: with ``only``, read a Hugging Face folder's other weights from
    its files as the model runs, on the CPU (False loads the whole model). ``progress``
    receives one line per stage.

    Raises :class:`gradscope.errors.GradscopeError` for unusable input or options.
    """
    if isinstance(spectrum_steps, str):  # read first, as the command line always has
        spectrum_steps = parse_spectrum_steps(spectrum_steps)
    if example_input is not None:
        if not (isinstance(probe, str) and probe == DEFAULTS.probe):
            raise GradscopeError("give the example input or probe=, not both")
        probe = example_input
    load_options = LoadOptions(
        model=model,
        model_args=model_args,
        trust=trust,
        allow_globals=allow_globals,
        nonlinearity=nonlinearity,
        batch_first=batch_first,
        only=only,
        stream=stream,
    )
    options = AnalysisOptions(
        steps=steps,
        batch=batch,
        seed=seed,
        dtype=dtype,
        probe=probe,
        input_shape=input_shape,
        batch_first=batch_first,
        distance=horizon,
        epsilon=epsilon,
        burn_in=burn_in,
        exponents=exponents,
        spectrum_steps=spectrum_steps,
        device=device,
        output_key=output_key,
        cells=cells,
        granularity=depth,
        chi_probes=chi_probes,
        power_iterations=power_iterations,
        detect_cells=detect_cells,
        loss_at=loss_at,
        what_if=what_if,
        max_memory=max_memory,
        only=only,
    )
    from gradscope.pipeline import quiet, run

    source = str(model_or_path) if isinstance(model_or_path, Path) else model_or_path
    return run(source, load_options, options, progress or quiet)
