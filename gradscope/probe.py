"""The probe: the input a model is driven with, and the scalar loss its gradients come from.

The loss is a fixed, seeded random unit vector ``w`` dotted with the model's output at the last
time step (the whole output when it has no time axis), summed over the batch. Every gradient
norm gradscope reports is a norm of the gradient of that loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from gradscope.errors import GradscopeError
from gradscope.recurrent.unroll import find_recurrent
from gradscope.settings import BUILTIN_PROBES, Settings


@dataclass(frozen=True)
class Layout:
    """Where time and batch sit in the model's input, and the feature size it expects."""

    features: int
    batch_first: bool
    source: str
    assumed: bool = False
    module: str | None = None

    def shape(self, steps: int, batch: int) -> tuple[int, ...]:
        """The input shape for a probe of ``steps`` steps and ``batch`` sequences."""
        if self.batch_first:
            return (batch, steps, self.features)
        return (steps, batch, self.features)

    def axes(self, ndim: int, tokens: bool = False) -> tuple[int, int | None]:
        """(time axis, batch axis) of an input with ``ndim`` dimensions.

        Feature inputs are (batch, steps, F), (steps, batch, F) or unbatched (steps, F); token
        inputs (integer ids for an embedding) lack the feature axis.
        """
        if ndim == 2 - tokens:
            return 0, None
        return (1, 0) if self.batch_first else (0, 1)


@dataclass
class Probe:
    """The probe input (a leaf that requires grad) and how to read the model's output."""

    inputs: Tensor
    time_axis: int
    batch_axis: int | None
    kind: str
    seed: int
    note: str | None = None
    layout_module: str | None = None

    @property
    def steps(self) -> int:
        """Number of time steps in the probe."""
        return self.inputs.shape[self.time_axis]

    @property
    def batch(self) -> int:
        """Number of sequences in the probe."""
        return 1 if self.batch_axis is None else self.inputs.shape[self.batch_axis]


def input_layout(model: nn.Module, batch_first: bool | None = None) -> Layout:
    """The input layout of the model's first recurrent module, or the one ``batch_first`` sets.

    Cells take one step at a time, so their sequences are assumed batch-first unless told.
    """
    found = find_recurrent(model)
    if not found:
        raise GradscopeError(
            "the model has no recurrent module (nn.RNN, nn.LSTM, nn.GRU or a cell); gradscope's "
            "recurrent analysis needs one"
        )
    name, module = found[0]
    inferred = getattr(module, "batch_first", None)
    chosen = inferred if batch_first is None else batch_first
    source = name or type(module).__name__
    assumed = chosen is None
    return Layout(module.input_size, chosen is not False, source, assumed, name)


def _load_probe_file(path: Path) -> Tensor:
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
    if not isinstance(loaded, Tensor):
        raise GradscopeError(
            f"--probe {path} holds a {type(loaded).__name__}, not a tensor; save a single tensor"
        )
    return loaded


def make_probe(model: nn.Module, settings: Settings, device: torch.device) -> Probe:
    """Build the probe input the settings ask for, shaped for ``model``."""
    layout = input_layout(model, settings.batch_first)
    dtype = getattr(torch, settings.dtype)
    generator = torch.Generator().manual_seed(settings.seed)
    if settings.probe in BUILTIN_PROBES:
        shape = settings.input_shape or layout.shape(settings.steps, settings.batch)
        if settings.probe == "zeros":
            inputs = torch.zeros(shape, dtype=dtype)
        else:
            inputs = torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)
    else:
        if settings.input_shape:
            raise GradscopeError(
                "--input-shape and a --probe file both set the input shape: drop --input-shape"
            )
        inputs = _load_probe_file(Path(settings.probe))
        if inputs.is_floating_point():
            inputs = inputs.to(dtype)
            _check_probe_shape(inputs, layout, settings.probe)
    tokens = not inputs.is_floating_point()
    if inputs.dim() not in (2 - tokens, 3 - tokens):
        expected = "(batch, steps) or (steps)" if tokens else "(batch, steps, F) or (steps, F)"
        raise GradscopeError(
            f"the probe has shape {tuple(inputs.shape)}; a sequence input is shaped "
            f"{expected}: fix --input-shape or the probe file"
        )
    time_axis, batch_axis = layout.axes(inputs.dim(), tokens)
    inputs = inputs.to(device).requires_grad_(not tokens)
    kind = settings.probe if settings.probe in BUILTIN_PROBES else "file"
    note = None
    if layout.assumed:
        note = (
            f"{layout.source} is a cell: the probe assumes batch-first sequences "
            "(batch, steps, features); pass --time-major if the model loops over axis 0"
        )
    return Probe(inputs, time_axis, batch_axis, kind, settings.seed, note, layout.module)


def _check_probe_shape(inputs: Tensor, layout: Layout, path: str) -> None:
    if inputs.dim() not in (2, 3) or inputs.shape[-1] != layout.features:
        expected = "(batch, steps, F)" if layout.batch_first else "(steps, batch, F)"
        raise GradscopeError(
            f"--probe {path} has shape {tuple(inputs.shape)}, but {layout.source} expects "
            f"{expected} or (steps, F) with F = {layout.features}: save the probe in that shape"
        )


def output_tensors(output: object) -> list[Tensor]:
    """Every tensor in a model output (tensor, or nested tuple/list/dict of them), in order."""
    if isinstance(output, Tensor):
        return [output]
    if isinstance(output, dict):
        items = list(output.values())
    elif isinstance(output, (tuple, list)):
        items = list(output)
    else:
        return []
    return [tensor for item in items for tensor in output_tensors(item)]


def differentiable_output(output: object) -> Tensor | None:
    """The first floating-point output tensor that depends on the input or the weights."""
    candidates = [t for t in output_tensors(output) if t.is_floating_point()]
    return next((t for t in candidates if t.requires_grad), None)


def projection_loss(output: object, probe: Probe) -> Tensor:
    """``sum_b <w, y_b>``: ``y`` the output at the last step, ``w`` a seeded unit vector.

    ``y`` is the first floating-point tensor of the output that carries a gradient, so
    ``(predicted_ids, logits)`` or ``{"mask": ..., "logits": ...}`` outputs use the logits.
    """
    y = differentiable_output(output)
    if y is None:
        raise GradscopeError(
            "the model's output holds no floating-point tensor that depends on its input; "
            "gradscope needs a model that returns one (logits, states, predictions)"
        )
    batch_axis = probe.batch_axis
    sequence = y.dim() >= probe.inputs.dim() and y.dim() > probe.time_axis
    if sequence and y.shape[probe.time_axis] == probe.steps:
        y = y.select(probe.time_axis, -1)
        if batch_axis is not None and probe.time_axis < batch_axis:
            batch_axis -= 1
    if batch_axis is not None and y.dim() > batch_axis and y.shape[batch_axis] == probe.batch:
        y = y.movedim(batch_axis, 0).reshape(probe.batch, -1)
    else:
        y = y.reshape(1, -1)
    generator = torch.Generator().manual_seed(probe.seed + 1)
    direction = torch.randn(y.shape[1], generator=generator, dtype=torch.float64)
    direction = (direction / direction.norm()).to(y)
    return (y @ direction).sum()
