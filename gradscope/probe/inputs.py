"""The probe input: built (gaussian or zeros), read from a file, or given as a tensor, in the
model's layout, as a leaf that requires grad."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from gradscope.errors import GradscopeError, first_line
from gradscope.options import DEFAULT_STEPS, AnalysisOptions
from gradscope.probe.layout import Layout, input_layout
from gradscope.probe.positions import TRIAL_STEPS, Positions, layout_by_data_flow
from gradscope.probe.structure import map_tensors, tensor_leaves
from gradscope.probe.trial import trial_run
from gradscope.taxonomy import is_kind


@dataclass
class Probe:
    """The probe input (a leaf that requires grad) and how to read the model's output.

    ``inputs`` is the main input: its time and batch axes are the probe's, and its gradient
    is measured. A model called with several inputs has them all in ``payload``.
    """

    inputs: Tensor
    time_axis: int | None
    batch_axis: int | None
    kind: str
    seed: int
    note: str | None = None
    layout_module: str | None = None
    token_module: str | None = None
    output_key: str | None = None
    payload: object = None
    spread: str = "one"

    @property
    def steps(self) -> int:
        """Number of time steps in the probe (1 for an input without a time axis)."""
        return 1 if self.time_axis is None else self.inputs.shape[self.time_axis]

    @property
    def batch(self) -> int:
        """Number of sequences in the probe."""
        return 1 if self.batch_axis is None else self.inputs.shape[self.batch_axis]

    @property
    def structured(self) -> bool:
        """True when the model is called with several inputs (``inputs`` is the main one)."""
        return self.payload is not None

    def call(self, model: nn.Module, inputs: Tensor | None = None) -> object:
        """``model`` on the probe, with ``inputs`` in place of the main input if given.

        A single input is ``model(x)``; several are the ``payload`` passed as ``spread`` says:
        ``args`` (``model(*payload)``), ``kwargs`` (``model(**payload)``), ``both`` (a
        payload of (args, kwargs)) or ``one`` (``model(payload)``, a dict read whole).
        """
        chosen = self.inputs if inputs is None else inputs
        if self.payload is None:
            return model(chosen)
        main = self.inputs
        value = map_tensors(self.payload, lambda t: chosen if t is main else t)
        if self.spread == "args":
            return model(*value)
        if self.spread == "kwargs":
            return model(**value)
        if self.spread == "both":
            return model(*value[0], **value[1])
        return model(value)

    def cast(self, dtype: torch.dtype) -> Probe:
        """The same probe with every floating-point input in ``dtype``; the main input stays a
        leaf that requires grad."""
        old = self.inputs
        main = old
        if old.is_floating_point():
            main = old.detach().to(dtype).requires_grad_(old.requires_grad)

        def cast(tensor: Tensor) -> Tensor:
            if tensor is old:
                return main
            return tensor.detach().to(dtype) if tensor.is_floating_point() else tensor

        payload = None if self.payload is None else map_tensors(self.payload, cast)
        return dataclasses.replace(self, inputs=main, payload=payload)

    def named_inputs(self) -> list[tuple[str, Tensor]]:
        """Each input tensor, named by position or key (``0``, ``mask``, ``0.past_target``);
        empty for a single input."""
        payload = self.payload
        if payload is None:
            return []
        if self.spread == "both":
            payload = {**dict(enumerate(payload[0])), **payload[1]}
        return [(".".join(map(str, path)), t) for path, t in tensor_leaves(payload)]

    def shapes(self) -> dict[str, list[int]]:
        """Every input's shape, by :meth:`named_inputs`; empty for a single input."""
        return {name: list(tensor.shape) for name, tensor in self.named_inputs()}


def load_probe_file(path: Path) -> object:
    """The tensor (or dict, tuple or list of tensors) in a ``--probe`` file (.pt or .npy),
    read without running code."""
    if not path.is_file():
        raise GradscopeError(
            f"--probe {path}: no such file; use gaussian, zeros or a tensor file (.pt or .npy)"
        )
    try:
        if path.suffix == ".npy":
            return torch.from_numpy(np.load(path, allow_pickle=False))
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise GradscopeError(
            f"--probe {path} is not a readable tensor file ({type(error).__name__}); save it "
            "with torch.save(tensor, path) or numpy.save"
        ) from None
    if not isinstance(loaded, (Tensor, dict, list, tuple)):
        raise GradscopeError(
            f"--probe {path} holds a {type(loaded).__name__}; save a tensor, or a dict, tuple "
            "or list of tensors for a model called with several inputs"
        )
    return loaded


def given_probe(options: AnalysisOptions) -> object:
    """The probe the user gave (a tensor file or a tensor; a dict, tuple or list of tensors
    for several inputs), on the CPU; None for built-ins."""
    if options.probe_kind == "file":
        return load_probe_file(Path(options.probe))
    if isinstance(options.probe, (dict, list, tuple)) and not _numeric(options.probe):
        return options.probe
    if options.probe_kind == "tensor":
        try:
            return torch.as_tensor(options.probe).detach().cpu()
        except Exception as error:
            raise GradscopeError(
                f"the probe is a {type(options.probe).__name__}, not a tensor "
                f"({first_line(error)}); pass a tensor shaped as the model's input"
            ) from None
    return None


def _numeric(value: object) -> bool:
    """Whether a list or tuple is numbers (an array given as a list), not several inputs."""
    return isinstance(value, (list, tuple)) and not any(
        isinstance(item, (Tensor, dict, np.ndarray)) for item in value
    )


def make_probe(model: nn.Module, options: AnalysisOptions, device: torch.device) -> Probe:
    """Build the probe input the options ask for, shaped for ``model``.

    The layout read from the model's modules is checked by data flow on a short trial run
    (a positional embedding is not the token input); a positional embedding also bounds the
    probe's length when the user left it open. A model called with several inputs gets them
    all, its main input found by data flow (:mod:`gradscope.probe.structured`).
    """
    from gradscope.probe.structured import several_inputs, structured_probe

    given = given_probe(options) if not options.builtin_probe else None
    payload = several_inputs(options, given)
    if payload is not None:
        return structured_probe(model, options, device, payload)
    # a probe the user gave says the shape, as --input-shape would
    given_shape = tuple(given.shape) if isinstance(given, Tensor) and given.dim() else None
    shape = options.input_shape or given_shape
    layout = input_layout(model, options.batch_first, shape, options.cells)
    note = None
    if any(is_kind(module, ("Embedding",)) for module in model.modules()):
        layout, positions = layout_by_data_flow(
            model,
            layout,
            options,
            lambda trial: _trial_inputs(trial, options, device, given),
            shape,
        )
        options, note = _within_positions(options, positions)
        if layout.tokens:
            options, note = _longest_that_runs(model, layout, options, device, note)
    try:
        probe = probe_for(layout, options, device, given)
    except ProbeShapeMismatch:
        if not isinstance(given, Tensor) or given.dim() not in (2, 3):
            raise
        # the input as it stands: the first module may sit inside a loop and read more
        original = layout
        layout = Layout(
            int(given.shape[-1]),
            options.batch_first is not False,
            "the probe",
            sequence=given.dim() == 3,
        )
        probe = probe_for(layout, options, device, given)
        note = (
            f"the probe, shaped {tuple(given.shape)}, is used as it stands: the first module "
            f"with weights ({original.source}) reads {original.features} features, so it sits "
            "inside what the model runs"
        )
    probe.note = " ".join(filter(None, [probe.note, note])) or None
    return probe


def _trial_inputs(
    layout: Layout, options: AnalysisOptions, device: torch.device, given: object = None
) -> Tensor:
    """A short input in ``layout``: the user's own input when they gave one."""
    if options.builtin_probe and not options.input_shape:
        options = dataclasses.replace(options, steps=TRIAL_STEPS, batch=2, probe="gaussian")
    return probe_for(layout, options, device, given).inputs.detach()


def _within_positions(
    options: AnalysisOptions, positions: Positions
) -> tuple[AnalysisOptions, str | None]:
    """The options with the probe no longer than a positional embedding serves, and a note;
    an explicit longer ``--steps`` is refused."""
    limit = positions.limit
    if limit is None or options.input_shape or not options.builtin_probe:
        return options, None
    name, size = limit
    if options.steps is None:
        if size >= DEFAULT_STEPS:
            return options, None
        return dataclasses.replace(options, steps=size), (
            f"the probe runs {size} steps, the positions the positional embedding {name} has"
        )
    if options.steps > size:
        raise GradscopeError(
            f"--steps {options.steps} is longer than the positional embedding {name} serves "
            f"({size} positions): pass --steps {size} or fewer"
        )
    return options, None


def _longest_that_runs(
    model: nn.Module,
    layout: Layout,
    options: AnalysisOptions,
    device: torch.device,
    note: str | None,
) -> tuple[AnalysisOptions, str | None]:
    """Token ids the model cannot take at the default length (positions it has no embedding
    for, looked up where no hook sees them): the longest length it runs on, by bisection
    between the trial's length and the default; the options unchanged where the user set the
    length or the model runs."""
    given = options.steps is not None and note is None  # --steps, not a positional bound
    if not options.builtin_probe or options.input_shape or given:
        return options, note
    steps = options.steps or DEFAULT_STEPS

    def runs(length: int) -> bool:  # the probe's own batch: what the ids hold matters
        trial = dataclasses.replace(options, steps=length, probe="gaussian")
        inputs = probe_for(layout, trial, device).inputs.detach()
        return trial_run(lambda: model(inputs))

    if runs(steps) or not runs(TRIAL_STEPS):
        return options, note
    low, high = TRIAL_STEPS, steps  # runs at low, not at high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if runs(middle) else (low, middle)
    return dataclasses.replace(options, steps=low), (
        f"the probe runs {low} steps, the longest the model takes ({high} fail: the positions "
        "it embeds end there)"
    )


def builtin_tensor(shape: tuple[int, ...], kind: str, generator: torch.Generator) -> Tensor:
    """A built-in probe tensor (float64): ``zeros``, or seeded ``gaussian`` N(0, 1)."""
    if kind == "zeros":
        return torch.zeros(shape, dtype=torch.float64)
    return torch.randn(shape, generator=generator, dtype=torch.float64)


def probe_for(
    layout: Layout, options: AnalysisOptions, device: torch.device, given: object = None
) -> Probe:
    """Build the probe input the options ask for, in ``layout`` (``given``: the user's probe,
    already read)."""
    options = options.with_length()
    dtype = getattr(torch, options.float_dtype)
    generator = torch.Generator().manual_seed(options.seed)
    if options.builtin_probe:
        shape = options.input_shape or layout.shape(options.steps, options.batch)
        if layout.tokens:
            high = layout.vocab if options.probe == "gaussian" else 1
            inputs = torch.randint(0, high, shape, generator=generator)
        else:
            inputs = builtin_tensor(shape, options.probe, generator).to(dtype)
    else:
        if options.input_shape:
            given = "a --probe file" if options.probe_kind == "file" else "the probe tensor"
            raise GradscopeError(
                f"--input-shape and {given} both set the input shape: drop --input-shape"
            )
        inputs = given_probe(options) if given is None else given
        name = options.probe if options.probe_kind == "file" else "(a tensor)"
        if inputs.is_floating_point():
            inputs = inputs.to(dtype)
            _check_probe_shape(inputs, layout, name)
        elif (
            layout.tokens
            and inputs.numel()
            and not 0 <= int(inputs.min()) <= int(inputs.max()) < layout.vocab
        ):
            raise GradscopeError(
                f"--probe {name} holds token ids outside [0, {layout.vocab}), the "
                f"vocabulary of {layout.token_module}: save ids the embedding can look up"
            )
    tokens = not inputs.is_floating_point()
    if layout.sequence and not layout.time_last and inputs.dim() not in (2 - tokens, 3 - tokens):
        expected = "(batch, steps) or (steps)" if tokens else "(batch, steps, F) or (steps, F)"
        raise GradscopeError(
            f"the probe has shape {tuple(inputs.shape)}; a sequence input is shaped "
            f"{expected}: fix --input-shape or the probe file"
        )
    time_axis, batch_axis = layout.axes(inputs.dim(), tokens)
    inputs = inputs.to(device).requires_grad_(not tokens)
    kind = options.probe_kind
    note = None
    if layout.assumed:
        note = (
            f"{layout.source} is a cell: the probe assumes batch-first sequences "
            "(batch, steps, features); pass --time-major if the model loops over axis 0"
        )
    return Probe(
        inputs,
        time_axis,
        batch_axis,
        kind,
        options.seed,
        note,
        layout.module,
        layout.token_module,
        options.output_key,
    )


class ProbeShapeMismatch(GradscopeError):
    """A given probe not shaped as the model's first module reads."""


def _check_probe_shape(inputs: Tensor, layout: Layout, path: str) -> None:
    if layout.time_last or layout.tokens or layout.features is None:
        return
    if not layout.sequence:
        if inputs.dim() != 2 or inputs.shape[-1] != layout.features:
            raise ProbeShapeMismatch(
                f"--probe {path} has shape {tuple(inputs.shape)}, but {layout.source} expects "
                f"(batch, {layout.features}): save the probe in that shape"
            )
        return
    if inputs.dim() not in (2, 3) or inputs.shape[-1] != layout.features:
        expected = "(batch, steps, F)" if layout.batch_first else "(steps, batch, F)"
        raise ProbeShapeMismatch(
            f"--probe {path} has shape {tuple(inputs.shape)}, but {layout.source} expects "
            f"{expected} or (steps, F) with F = {layout.features}: save the probe in that shape"
        )
