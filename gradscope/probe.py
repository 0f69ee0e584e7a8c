"""The probe: the input a model is driven with, and the scalar loss its gradients come from.

The loss is a fixed, seeded random unit vector ``w`` dotted with the model's output at the last
time step (the whole output when it has no time axis), summed over the batch. Every gradient
norm gradscope reports is a norm of the gradient of that loss.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from gradscope.errors import GradscopeError, first_line
from gradscope.options import AnalysisOptions
from gradscope.taxonomy import CONVOLUTIONS, is_recurrent, recurrent_modules, type_name


@dataclass(frozen=True)
class Layout:
    """Where time and batch sit in the model's input, and what the input holds.

    ``features`` is the feature size of a float input; token inputs (integer ids for an
    embedding) have ``vocab`` instead, and no feature axis.
    """

    features: int | None
    batch_first: bool
    source: str
    assumed: bool = False
    module: str | None = None
    vocab: int | None = None
    token_module: str | None = None
    time_last: bool = False
    sequence: bool = True

    @property
    def tokens(self) -> bool:
        """True when the model reads integer token ids."""
        return self.vocab is not None

    def shape(self, steps: int, batch: int) -> tuple[int, ...]:
        """The input shape for a probe of ``steps`` steps and ``batch`` sequences."""
        if not self.sequence:
            return (batch, self.features)
        sequence = (batch, steps) if self.batch_first else (steps, batch)
        return sequence if self.tokens else (*sequence, self.features)

    def axes(self, ndim: int, tokens: bool = False) -> tuple[int | None, int | None]:
        """(time axis, batch axis) of an input with ``ndim`` dimensions.

        Feature inputs are (batch, steps, F), (steps, batch, F) or unbatched (steps, F); token
        inputs (integer ids for an embedding) lack the feature axis.
        """
        if not self.sequence:
            return None, 0
        if self.time_last:
            return ndim - 1, 0
        if ndim == 2 - tokens:
            return 0, None
        return (1, 0) if self.batch_first else (0, 1)


@dataclass
class Probe:
    """The probe input (a leaf that requires grad) and how to read the model's output."""

    inputs: Tensor
    time_axis: int | None
    batch_axis: int | None
    kind: str
    seed: int
    note: str | None = None
    layout_module: str | None = None
    token_module: str | None = None
    output_key: str | None = None

    @property
    def steps(self) -> int:
        """Number of time steps in the probe (1 for an input without a time axis)."""
        return 1 if self.time_axis is None else self.inputs.shape[self.time_axis]

    @property
    def batch(self) -> int:
        """Number of sequences in the probe."""
        return 1 if self.batch_axis is None else self.inputs.shape[self.batch_axis]


def first_parametrised(
    model: nn.Module, inside: tuple[str, ...] = ()
) -> tuple[str, nn.Module] | None:
    """The first module (in registration order) that holds parameters of its own.

    Modules inside the custom cells ``inside`` come last: a cell's first layer may read the
    state as well as the input.
    """
    found = [
        (name, module)
        for name, module in model.named_modules()
        if is_recurrent(module) or next(module.parameters(recurse=False), None) is not None
    ]
    within = [
        entry
        for entry in found
        if any(entry[0] == c or entry[0].startswith(c + ".") for c in inside)
    ]
    ordered = [entry for entry in found if entry not in within] + within
    return ordered[0] if ordered else None


def _entry(name: str, module: nn.Module, needs_shape: bool) -> tuple[int | None, int | None]:
    """(feature size, vocabulary) of the input that ``module`` reads, when it says."""
    kind = type_name(module)
    if kind == "Embedding" or isinstance(module, nn.Embedding):
        return None, module.num_embeddings
    if kind == "Linear" or isinstance(module, nn.Linear):
        return module.in_features, None
    if kind == "LayerNorm" or isinstance(module, nn.LayerNorm):
        return module.normalized_shape[-1], None
    if is_recurrent(module):
        return module.input_size, None
    if kind in CONVOLUTIONS and needs_shape:
        channels = module.in_channels
        example = {"Conv1d": "B,{c},L", "Conv2d": "B,{c},H,W", "Conv3d": "B,{c},D,H,W"}[kind]
        raise GradscopeError(
            f"the model starts with {name or 'its root'} ({kind}, {channels} input channels): "
            f"the rest of its input shape is unknown; pass --input-shape "
            f"{example.format(c=channels)}"
        )
    return None, None


def input_layout(
    model: nn.Module,
    batch_first: bool | None = None,
    input_shape: tuple | None = None,
    cells: tuple[str, ...] = (),
) -> Layout:
    """The model's input: from its first parametrised module, time layout from its first RNN.

    An ``nn.Embedding`` first means token ids, an ``nn.Linear`` or a recurrent module first
    means features of its input size. The time layout is the first recurrent module's
    ``batch_first``, or the one ``batch_first`` sets; cells (PyTorch's or custom ones named in
    ``cells``) loop in the user's code, so their sequences are assumed batch-first unless told.
    """
    recurrent = recurrent_modules(model)
    if recurrent:
        name, module = recurrent[0]
        inferred, features = getattr(module, "batch_first", None), module.input_size
        source = name or type(module).__name__
    elif cells:
        name, module, inferred, features, source = cells[0], None, None, None, cells[0]
    else:
        return feedforward_layout(model, input_shape)
    chosen = inferred if batch_first is None else batch_first
    vocab, token_module, time_last = None, None, False
    first = first_parametrised(model, cells)
    if first is not None and first[1] is not module:
        entry_features, vocab = _entry(*first, needs_shape=input_shape is None)
        features = entry_features or features
        token_module = first[0] if vocab is not None else None
        time_last = type_name(first[1]) in CONVOLUTIONS
    if features is None and vocab is None and input_shape is None:
        raise GradscopeError(
            f"the input size of the model around {source} is unknown; pass --input-shape, e.g. "
            "1,100,F for (batch, steps, features)"
        )
    return Layout(
        features, chosen is not False, source, chosen is None, name, vocab, token_module, time_last
    )


def feedforward_layout(model: nn.Module, input_shape: tuple | None = None) -> Layout:
    """The input of a model without recurrent modules: a batch of what its first module reads.

    ``nn.Linear`` first: (batch, in_features); ``nn.Embedding``: token ids (batch, steps);
    anything else (a convolution, say) needs ``--input-shape``, whose first axis is the batch.
    """
    first = first_parametrised(model)
    if first is None:
        raise GradscopeError(
            "the model has no module with parameters; gradscope analyses trained or initialised "
            "networks: check the checkpoint"
        )
    features, vocab = _entry(*first, needs_shape=input_shape is None)
    name = first[0] or type(first[1]).__name__
    if features is None and vocab is None and input_shape is None:
        raise GradscopeError(
            f"the model starts with {name} ({type_name(first[1])}), whose input shape gradscope "
            "cannot infer; pass --input-shape with the batch first, e.g. 16,3,32,32"
        )
    tokens = vocab is not None
    return Layout(
        features,
        True,
        name,
        vocab=vocab,
        token_module=first[0] if tokens else None,
        sequence=tokens,
    )


def load_probe_file(path: Path) -> Tensor:
    """The tensor in a ``--probe`` file (.pt or .npy), read without running code."""
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


def given_probe(options: AnalysisOptions) -> Tensor | None:
    """The probe the user gave (a tensor file or a tensor), on the CPU; None for built-ins."""
    if options.probe_kind == "file":
        return load_probe_file(Path(options.probe))
    if options.probe_kind == "tensor":
        try:
            return torch.as_tensor(options.probe).detach().cpu()
        except Exception as error:
            raise GradscopeError(
                f"the probe is a {type(options.probe).__name__}, not a tensor "
                f"({first_line(error)}); pass a tensor shaped as the model's input"
            ) from None
    return None


def make_probe(model: nn.Module, settings: AnalysisOptions, device: torch.device) -> Probe:
    """Build the probe input the settings ask for, shaped for ``model``."""
    layout = input_layout(model, settings.batch_first, settings.input_shape, settings.cells)
    return probe_for(layout, settings, device)


def probe_for(layout: Layout, settings: AnalysisOptions, device: torch.device) -> Probe:
    """Build the probe input the settings ask for, in ``layout``."""
    dtype = getattr(torch, settings.dtype)
    generator = torch.Generator().manual_seed(settings.seed)
    if settings.builtin_probe:
        shape = settings.input_shape or layout.shape(settings.steps, settings.batch)
        if layout.tokens:
            high = layout.vocab if settings.probe == "gaussian" else 1
            inputs = torch.randint(0, high, shape, generator=generator)
        elif settings.probe == "zeros":
            inputs = torch.zeros(shape, dtype=dtype)
        else:
            inputs = torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)
    else:
        if settings.input_shape:
            raise GradscopeError(
                "--input-shape and a --probe file both set the input shape: drop --input-shape"
            )
        inputs = given_probe(settings)
        name = settings.probe if settings.probe_kind == "file" else "(a tensor)"
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
    kind = settings.probe_kind
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
        settings.seed,
        note,
        layout.module,
        layout.token_module,
        settings.output_key,
    )


def _check_probe_shape(inputs: Tensor, layout: Layout, path: str) -> None:
    if layout.time_last or layout.tokens or layout.features is None:
        return
    if not layout.sequence:
        if inputs.dim() != 2 or inputs.shape[-1] != layout.features:
            raise GradscopeError(
                f"--probe {path} has shape {tuple(inputs.shape)}, but {layout.source} expects "
                f"(batch, {layout.features}): save the probe in that shape"
            )
        return
    if inputs.dim() not in (2, 3) or inputs.shape[-1] != layout.features:
        expected = "(batch, steps, F)" if layout.batch_first else "(steps, batch, F)"
        raise GradscopeError(
            f"--probe {path} has shape {tuple(inputs.shape)}, but {layout.source} expects "
            f"{expected} or (steps, F) with F = {layout.features}: save the probe in that shape"
        )


def _fields(output: object) -> dict[str, object] | None:
    """The named parts of a dict, a dataclass or a model-output object; None for others."""
    if isinstance(output, dict):
        return dict(output)
    if dataclasses.is_dataclass(output) and not isinstance(output, type):
        return {f.name: getattr(output, f.name) for f in dataclasses.fields(output)}
    return None


def output_tensors(output: object) -> list[Tensor]:
    """Every tensor in a model output (tensor, or nested tuple/list/dict of them), in order."""
    if isinstance(output, Tensor):
        return [output]
    fields = _fields(output)
    if fields is not None:
        items = list(fields.values())
    elif isinstance(output, (tuple, list)):
        items = list(output)
    else:
        return []
    return [tensor for item in items for tensor in output_tensors(item)]


def select_output(output: object, key: str | None) -> object:
    """The part of the output that ``--output-key`` names: a dict key, field or tuple index.

    Without a key: the ``logits`` of a dict or model-output object, when it has them.
    """
    fields = _fields(output)
    if key is None:
        if fields is not None and isinstance(fields.get("logits"), Tensor):
            return fields["logits"]
        return output
    if fields is not None and key in fields:
        return fields[key]
    if isinstance(output, (tuple, list)) and key.lstrip("-").isdigit():
        index = int(key)
        if -len(output) <= index < len(output):
            return output[index]
    if fields is not None:
        available = ", ".join(map(str, fields)) or "none"
    elif isinstance(output, (tuple, list)):
        available = f"indices 0 to {len(output) - 1}"
    else:
        available = f"none: the output is a {type(output).__name__}"
    raise GradscopeError(
        f"--output-key {key!r} is not in the model's output (available: {available}); pick one"
    )


def differentiable_output(
    output: object, key: str | None = None, traced: bool = True
) -> Tensor | None:
    """The first floating-point output tensor that depends on the input or the weights.

    ``traced=False`` skips the ``requires_grad`` test, which torch.func transforms hide.
    """
    chosen = select_output(output, key)
    candidates = [t for t in output_tensors(chosen) if t.is_floating_point()]
    return next((t for t in candidates if t.requires_grad or not traced), None)


def projected_output(output: object, probe: Probe, traced: bool = True) -> Tensor:
    """``y``, (batch, m): the output tensor the loss reads, at the last time step.

    ``y`` is the first floating-point tensor of the output that carries a gradient, so
    ``(predicted_ids, logits)`` or ``{"mask": ..., "logits": ...}`` outputs use the logits.
    """
    y = differentiable_output(output, probe.output_key, traced)
    if y is None:
        where = f"--output-key {probe.output_key}" if probe.output_key else "the model's output"
        raise GradscopeError(
            f"{where} holds no floating-point tensor that depends on its input; "
            "gradscope needs a model that returns one (logits, states, predictions)"
        )
    batch_axis = probe.batch_axis
    time_axis = probe.time_axis
    sequence = time_axis is not None and y.dim() >= probe.inputs.dim() and y.dim() > time_axis
    if sequence and y.shape[time_axis] == probe.steps:
        y = y.select(time_axis, -1)
        if batch_axis is not None and time_axis < batch_axis:
            batch_axis -= 1
    if batch_axis is not None and y.dim() > batch_axis and y.shape[batch_axis] == probe.batch:
        return y.movedim(batch_axis, 0).reshape(probe.batch, -1)
    return y.reshape(1, -1)


def loss_direction(size: int, probe: Probe, like: Tensor) -> Tensor:
    """``w``: the seeded random unit vector the loss projects the output on."""
    generator = torch.Generator().manual_seed(probe.seed + 1)
    direction = torch.randn(size, generator=generator, dtype=torch.float64)
    return (direction / direction.norm()).to(like)


def projection_loss(output: object, probe: Probe) -> Tensor:
    """``sum_b <w, y_b>``: ``y`` the output at the last step, ``w`` a seeded unit vector."""
    y = projected_output(output, probe)
    return (y @ loss_direction(y.shape[1], probe, y)).sum()


def run_model(model: nn.Module, probe: Probe, given_shape: bool = False) -> object:
    """``model(probe.inputs)``; a failure is a one-line error with the model's own reason and
    the option to change."""
    try:
        return model(probe.inputs)
    except GradscopeError:
        raise
    except Exception as error:
        reason = first_line(error)
        advice = "pass --input-shape or --probe with the input it expects"
        if given_shape:
            advice = "check --input-shape: the batch comes first, then the model's input"
        elif probe.time_axis is None:
            advice += " (a recurrent model that loops a cell of its own: name it with --cell)"
        if re.search(r"same dtype|scalar type (Double|Float)|\((double|float)\) and", reason):
            advice = "the model fixes its own dtype: rerun with --dtype float32"
        elif isinstance(error, TypeError) and "required positional argument" in reason:
            advice = (
                "gradscope drives forward with one input tensor: wrap the model in a module "
                "whose forward(x) supplies the other inputs, and analyse that"
            )
        raise GradscopeError(
            f"the model's forward failed on a probe of shape {tuple(probe.inputs.shape)} "
            f"({type(error).__name__}: {reason}); {advice}"
        ) from None
