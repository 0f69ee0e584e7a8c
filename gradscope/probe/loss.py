"""The scalar loss every gradient is taken of: ``sum_b <w, y_b>``, ``y`` the model's output at
the last time step and ``w`` a fixed, seeded random unit vector; and the model run it reads."""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from gradscope.errors import GradscopeError, first_line
from gradscope.probe.inputs import Probe
from gradscope.probe.structure import fields, tensor_leaves


def output_tensors(output: object) -> list[Tensor]:
    """Every tensor in a model output (tensor, or nested tuple/list/dict of them), in order."""
    return [tensor for _, tensor in tensor_leaves(output)]


def select_output(output: object, key: str | None) -> object:
    """The part of the output that ``--output-key`` names: a dict key, field or tuple index.

    Without a key: the ``logits`` of a dict or model-output object, when it has them.
    """
    named = fields(output)
    if key is None:
        if named is not None and isinstance(named.get("logits"), Tensor):
            return named["logits"]
        return output
    if named is not None and key in named:
        return named[key]
    if isinstance(output, (tuple, list)) and key.lstrip("-").isdigit():
        index = int(key)
        if -len(output) <= index < len(output):
            return output[index]
    if named is not None:
        available = ", ".join(map(str, named)) or "none"
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


def projected_output(output: object, probe: Probe, traced: bool = True, at: int = -1) -> Tensor:
    """``y``, (batch, m): the output tensor the loss reads, at time step ``at`` (the last by
    default) when it has the probe's time axis.

    ``y`` is the first floating-point tensor of the output that carries a gradient, so
    ``(predicted_ids, logits)`` or ``{"mask": ..., "logits": ...}`` outputs use the logits.
    """
    y = read_output(output, probe, traced)
    over = over_time(y, probe)
    if over is not None:
        return over[at]
    batch_axis = probe.batch_axis
    if batch_axis is not None and y.dim() > batch_axis and y.shape[batch_axis] == probe.batch:
        return y.movedim(batch_axis, 0).reshape(probe.batch, -1)
    return y.reshape(1, -1)


def read_output(output: object, probe: Probe, traced: bool = True) -> Tensor:
    """The output tensor the loss reads (:func:`differentiable_output`), or a one-line error."""
    y = differentiable_output(output, probe.output_key, traced)
    if y is None:
        where = f"--output-key {probe.output_key}" if probe.output_key else "the model's output"
        raise GradscopeError(
            f"{where} holds no floating-point tensor that depends on its input; "
            "gradscope needs a model that returns one (logits, states, predictions)"
        )
    return y


def over_time(y: Tensor, probe: Probe) -> Tensor | None:
    """``y`` as (steps, batch, m) when it has the probe's time axis (batch 1 when it has no
    batch axis of the probe's size); None when it has none (a sequence read out whole)."""
    time_axis, batch_axis = probe.time_axis, probe.batch_axis
    if (
        time_axis is None
        or y.dim() < probe.inputs.dim()
        or y.dim() <= time_axis
        or y.shape[time_axis] != probe.steps
    ):
        return None
    moved = y.movedim(time_axis, 0)
    if batch_axis is not None:
        batch_axis += batch_axis < time_axis
        if moved.dim() > batch_axis and moved.shape[batch_axis] == probe.batch:
            return moved.movedim(batch_axis, 1).reshape(probe.steps, probe.batch, -1)
    return moved.reshape(probe.steps, 1, -1)


def loss_direction(size: int, probe: Probe, like: Tensor) -> Tensor:
    """``w``: the seeded random unit vector the loss projects the output on."""
    generator = torch.Generator().manual_seed(probe.seed + 1)
    direction = torch.randn(size, generator=generator, dtype=torch.float64)
    return (direction / direction.norm()).to(like)


def projection_loss(output: object, probe: Probe, at: int = -1) -> Tensor:
    """``sum_b <w, y_b>``: ``y`` the output at step ``at`` (the last by default), ``w`` a
    seeded unit vector."""
    y = projected_output(output, probe, at=at)
    return (y @ loss_direction(y.shape[1], probe, y)).sum()


#: Error messages of a forward called with other arguments than it takes.
SIGNATURE_CLASH = (
    r"required (positional|keyword-only) argument|takes \d+ positional argument|"
    r"unexpected keyword argument"
)
#: Error messages of a model whose own weights or code clash with the probe's dtype.
DTYPE_CLASH = r"same dtype|scalar type (Double|Float|Long)|\((double|float|long)\) and"


def _dtype_advice(probe: Probe) -> str:
    """What to change when the model clashes with the probe's dtype; never advice that the
    probe already follows."""
    inputs = probe.inputs
    if inputs.dtype == torch.float64:
        return "the model fixes its own dtype: rerun with --dtype float32"
    if not inputs.is_floating_point():
        return (
            f"the probe is token ids{f' for {probe.token_module}' if probe.token_module else ''}"
            ", but the model reads floating-point values there: pass --input-shape with the "
            "shape it reads (e.g. 4,50,8 for batch, steps, features)"
        )
    return (
        "the model's own code mixes dtypes on a float32 probe: pass --probe with inputs in "
        "the dtypes it expects"
    )


def run_model(model: nn.Module, probe: Probe, given_shape: bool = False) -> object:
    """``model(probe.inputs)`` (or the model on all its inputs); a failure is a one-line error
    with the model's own reason and the option to change."""
    try:
        return probe.call(model)
    except GradscopeError:
        raise
    except Exception as error:
        reason = first_line(error)
        advice = "pass --input-shape or --probe with the input it expects"
        if given_shape:
            advice = "check --input-shape: the batch comes first, then the model's input"
        elif probe.time_axis is None:
            advice += " (a recurrent model that loops a cell of its own: name it with --cell)"
        if re.search(DTYPE_CLASH, reason):
            advice = _dtype_advice(probe)
        elif isinstance(error, TypeError) and re.search(SIGNATURE_CLASH, reason):
            advice = (
                "give every input: a --probe file holding a tuple or dict of tensors "
                "(torch.save({'x': x, 'mask': mask}, 'probe.pt')), or --input-shape once per "
                "input (name=4,50,8 for a keyword)"
            )
        elif probe.structured and probe.kind in ("gaussian", "zeros"):
            advice = (
                f"--input-shape builds {probe.kind} floating-point inputs; inputs of other "
                "kinds (lengths, masks, token ids) need a --probe file holding them all"
            )
        shapes = probe.shapes() or {"": list(probe.inputs.shape)}
        shape = ", ".join(f"{k}={tuple(v)}" if k else str(tuple(v)) for k, v in shapes.items())
        raise GradscopeError(
            f"the model's forward failed on a probe of shape {shape} "
            f"({type(error).__name__}: {reason}); {advice}"
        ) from None
