"""Fixes for numbers that break: each snippet names the operation and line where a NaN or Inf
first appeared, and shows the stable form of it, or the training-step change that keeps the
weights finite."""

from __future__ import annotations

from collections.abc import Callable

from gradscope.fixes.code import SNIPPET_WIDTH
from gradscope.fixes.recurrent import clip_snippet
from gradscope.fixes.registry import Advice
from gradscope.precision import GRAD_SCALER_INIT
from gradscope.report import FixId, Numerics, Origin


def _origin(numerics: Numerics) -> Origin | None:
    return numerics.forward or numerics.backward


def _located(numerics: Numerics) -> list[str]:
    """Comment lines that say where the value broke: the module and the line of its code."""
    origin = _origin(numerics)
    if origin is None:
        return []
    lines = [f"# {origin.direction}: {origin.op} in {origin.place}"]
    if origin.source:
        lines.append(shortened(f"#   {origin.source}"))
    return lines


def shortened(line: str) -> str:
    """``line`` cut to a snippet's width, an ellipsis standing for the rest."""
    return line if len(line) <= SNIPPET_WIDTH else line[: SNIPPET_WIDTH - 1] + "…"


def _stable(numerics: Numerics) -> str:
    origin = _origin(numerics)
    op = origin.op if origin else "log"
    if op in ("sqrt", "rsqrt"):
        body = [
            "# a square root of a norm or variance: keep its argument away from 0 and",
            "# below 0 (its derivative at 0 is infinite)",
            "y = torch.sqrt(x.clamp_min(0) + 1e-12)",
        ]
    elif op in ("pow", "rpow", "float_power"):
        body = [
            "# a fractional power of a negative number is NaN: power |x|, keep the sign",
            "y = torch.sign(x) * x.abs().pow(p)",
        ]
    else:
        body = [
            "# log of a probability: log_softmax of the logits, not log(softmax(...))",
            "log_p = torch.log_softmax(logits, dim=-1)",
            "# log of a value that can reach 0 or below: clamp it first",
            "y = torch.log(x.clamp_min(1e-12))",
        ]
    return "\n".join([*_located(numerics), *body])


def _epsilon(numerics: Numerics) -> str:
    origin = _origin(numerics)
    op = origin.op if origin else "div"
    if op in ("sqrt", "rsqrt"):
        body = [
            "eps = 1e-6",
            "norm = torch.sqrt((x * x).sum(-1, keepdim=True) + eps)  # finite slope at 0",
        ]
    elif op in ("log", "log2", "log10", "log1p"):
        body = [
            "eps = 1e-6",
            "y = torch.log(x + eps)  # x >= 0 here; use log_softmax for probabilities",
        ]
    else:
        body = [
            "eps = 1e-5  # as nn.LayerNorm uses",
            "centred = x - x.mean(-1, keepdim=True)",
            "y = centred / torch.sqrt(x.var(-1, keepdim=True) + eps)",
            "# or, for any division: y = a / (b + eps) where b >= 0",
        ]
    return "\n".join([*_located(numerics), *body])


def _fixed(*lines: str) -> Callable[[Numerics], str]:
    """A snippet that does not depend on the model: a change to the training step."""
    return lambda numerics: "\n".join(lines)


def _restore(numerics: Numerics) -> str:
    names = [fault.name for fault in numerics.nonfinite_weights][:3]
    return "\n".join(
        [
            "# resume from the last checkpoint whose weights are all finite",
            "state = torch.load(path, map_location='cpu', weights_only=True)",
            "broken = [name for name, value in state.items()",
            "          if value.is_floating_point() and not torch.isfinite(value).all()]",
            f"# this checkpoint: {', '.join(names) or 'weight'} ...",
            "assert not broken, f'{path}: {broken} hold NaN or Inf'",
        ]
    )


_LEARNING_RATE = _fixed(
    "# a step that sends weights to Inf was too large: a tenth of the",
    "# rate, with a warm-up",
    "for group in optimizer.param_groups:",
    '    group["lr"] = group["lr"] / 10',
    "scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1,",
    "                                              total_iters=1000)",
)
_BFLOAT16 = _fixed(
    "# bfloat16 has float32's range: no overflow at 65504, no loss scaling",
    "with torch.autocast(device_type='cuda', dtype=torch.bfloat16):",
    "    loss = loss_fn(model(x), y)",
    "loss.backward()",
)
_LOSS_SCALING = _fixed(
    f"# float16: multiply the loss by a scale ({GRAD_SCALER_INIT:.0f} at first) so",
    "# small gradients stay above float16's smallest normal; the scaler",
    "# unscales before the step, and halves the scale when one overflows",
    "scaler = torch.amp.GradScaler('cuda')",
    "with torch.autocast(device_type='cuda', dtype=torch.float16):",
    "    loss = loss_fn(model(x), y)",
    "scaler.scale(loss).backward()",
    "scaler.step(optimizer)",
    "scaler.update()",
)


#: The advice for each fix a numerics finding calls for.
OVER_NUMERICS = {
    FixId.STABLE_FORMULATION: Advice(
        "Use a numerically stable formulation",
        "Compute the same quantity in a form that stays finite (log_softmax, a clamped log).",
        _stable,
    ),
    FixId.ADD_EPSILON: Advice(
        "Add an epsilon where a value can reach zero",
        "A small epsilon keeps a divisor, a square root or a log away from 0.",
        _epsilon,
    ),
    FixId.CLIP_GRAD_NORM: Advice(
        "Clip the gradient norm in the training step",
        "Clipping bounds each update, so one large gradient cannot push the weights to Inf.",
        lambda numerics: clip_snippet([], 0.0),
    ),
    FixId.LOWER_LEARNING_RATE: Advice(
        "Lower the learning rate",
        "Smaller steps keep weights and activations in range while training settles.",
        _LEARNING_RATE,
    ),
    FixId.RESTORE_WEIGHTS: Advice(
        "Restore weights from a finite checkpoint",
        "Weights that hold NaN or Inf cannot be repaired by training: resume from before.",
        _restore,
    ),
    FixId.USE_BFLOAT16: Advice(
        "Train in bfloat16 instead of float16",
        "bfloat16 keeps float32's range (largest 3.4e38, smallest normal 1.2e-38).",
        _BFLOAT16,
    ),
    FixId.LOSS_SCALING: Advice(
        "Scale the loss in float16 training",
        "Loss scaling lifts small gradients above float16's smallest normal (6.1e-5).",
        _LOSS_SCALING,
    ),
}

__all__ = ["OVER_NUMERICS"]
