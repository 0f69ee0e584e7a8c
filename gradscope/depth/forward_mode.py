"""Jacobian-vector products of blocks by forward-mode AD: cheaper for layers, and through attention.

- ``torch.func.jvp`` gives a module's parameters no tangent, and PyTorch's forward derivative of
  a convolution, a linear layer or batch norm then pushes a tangent of zeros through the weight
  term: a third convolution per convolution (a second matmul per linear layer) whose result is
  zero. While a JVP runs, :class:`FastRules` routes these ops through rules that add the weight
  and bias terms only when their tangents are not zero: the same products, exactly, at about
  the cost of two forward passes instead of three. Power iteration pushes again and again at
  the same point: a layer's output from an earlier push is used again when its input, weight
  and bias are equal to what they were (compared exactly) and neither was changed in place, so
  from the second push on only the tangents are computed through these layers.
- The fused ``scaled_dot_product_attention`` kernels have no forward derivative. A JVP that
  fails where attention ran is run again with the math backend (the same attention, written as
  matmuls and a softmax), which has one. :class:`FastRules` notes which blocks ran attention.

A torch function mode sees the calls a module makes, not those inside a composite function it
calls (``F.multi_head_attention_forward``): there the rules do not apply, which costs time only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import jvp
from torch.overrides import TorchFunctionMode

#: Ops linear in their input, called as ``op(input, weight, bias, ...)``.
LINEAR_OPS = (
    F.linear,
    F.conv1d,
    F.conv2d,
    F.conv3d,
    F.conv_transpose1d,
    F.conv_transpose2d,
    F.conv_transpose3d,
)
BATCH_NORM_ARGUMENTS = (
    "input",
    "running_mean",
    "running_var",
    "weight",
    "bias",
    "training",
    "momentum",
    "eps",
)
#: The errors forward-mode AD raises where an op has no forward derivative.
NO_FORWARD = (RuntimeError, NotImplementedError)


def _nonzero(tangent: Tensor | None) -> bool:
    return tangent is not None and bool(tangent.any())


def _same(tensor: Tensor | None, seen: Tensor | None, version: int) -> bool:
    """Whether ``tensor`` equals ``seen``, which has not changed since it was kept."""
    if tensor is None or seen is None:
        return tensor is seen
    if seen._version != version or tensor.shape != seen.shape or tensor.dtype != seen.dtype:
        return False
    return tensor is seen or torch.equal(tensor, seen)


def _key(op: Callable) -> tuple:
    """An op and the keywords bound to it, comparable from one push to the next."""
    keywords = getattr(op, "keywords", {})
    return getattr(op, "func", op), tuple(sorted(keywords.items()))


class _Primal:
    """One linear op's output at the point where the pushes are taken, with its arguments."""

    def __init__(self, op: Callable, x: Tensor, weight: Tensor, bias, rest: tuple, out: Tensor):
        self.op, self.rest = _key(op), rest
        self.tensors = [(t, t._version if t is not None else 0) for t in (x, weight, bias, out)]

    def output(self, op: Callable, x: Tensor, weight: Tensor, bias, rest: tuple) -> Tensor | None:
        """The kept output, where the op and its arguments are what they were; else None."""
        if _key(op) != self.op or rest != self.rest:
            return None
        (seen_x, vx), (seen_w, vw), (seen_b, vb), (out, vo) = self.tensors
        if out._version != vo or not all(
            _same(t, seen, v)
            for t, seen, v in ((x, seen_x, vx), (weight, seen_w, vw), (bias, seen_b, vb))
        ):
            return None
        return out


class _Primals:
    """The outputs of the linear ops of one push, in call order, for the next push."""

    def __init__(self) -> None:
        self.kept: list[_Primal] = []
        self.position = 0

    def __call__(self, op: Callable, x: Tensor, weight: Tensor, bias, rest: tuple) -> Tensor:
        index, self.position = self.position, self.position + 1
        if index < len(self.kept):
            out = self.kept[index].output(op, x, weight, bias, rest)
            if out is not None:
                return out
        out = op(x, weight, bias, *rest)
        primal = _Primal(op, x, weight, bias, rest, out)
        if index < len(self.kept):
            self.kept[index] = primal
        else:
            self.kept.append(primal)
        return out


class _LinearInInput(torch.autograd.Function):
    """``op(x, weight, bias, *rest)`` whose forward derivative is ``op(x_t, weight)`` plus the
    weight and bias terms only where their tangents are not zero; the output comes from
    ``primals`` (kept from an earlier push where nothing changed)."""

    @staticmethod
    def forward(primals: _Primals, op: Callable, x: Tensor, weight: Tensor, bias, *rest: object):
        return primals(op, x, weight, bias, tuple(rest))

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: Tensor) -> None:
        _, op, x, weight, _, *rest = inputs
        ctx.op, ctx.rest = op, rest
        ctx.save_for_forward(x, weight)

    @staticmethod
    def jvp(ctx, _primals, _op, x_t, weight_t: Tensor | None, bias_t, *_rest) -> Tensor:
        x, weight = ctx.saved_tensors
        out = ctx.op(x if x_t is None else x_t, weight, None, *ctx.rest)
        if x_t is None:
            out = torch.zeros_like(out)
        if _nonzero(weight_t) or _nonzero(bias_t):
            weight_t = torch.zeros_like(weight) if weight_t is None else weight_t
            out = out + ctx.op(x, weight_t, bias_t, *ctx.rest)
        return out


class _BatchNormEval(torch.autograd.Function):
    """Batch norm with running statistics, ``(x - mean) s w + b`` with ``s = (var + eps)^-1/2``,
    whose forward derivative is ``x_t s w``, plus the other terms only where their tangents are
    not zero."""

    @staticmethod
    def forward(x: Tensor, mean: Tensor, var: Tensor, weight, bias, eps: float) -> Tensor:
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: Tensor) -> None:
        x, mean, var, weight, _, eps = inputs
        ctx.eps, ctx.has_weight = eps, weight is not None
        ctx.save_for_forward(x, mean, var, *([weight] if weight is not None else []))

    @staticmethod
    def jvp(ctx, x_t, mean_t, var_t, weight_t, bias_t, _eps) -> Tensor:
        x, mean, var, *weight = ctx.saved_tensors
        shape = (1, -1, *([1] * (x.dim() - 2)))
        scale = (var + ctx.eps).rsqrt()
        gain = scale * weight[0] if weight else scale
        out = (x_t if x_t is not None else torch.zeros_like(x)) * gain.reshape(shape)
        if _nonzero(mean_t):
            out = out - (mean_t * gain).reshape(shape)
        if _nonzero(var_t):
            d_gain = -0.5 * scale.pow(3) * var_t * (weight[0] if weight else 1)
            out = out + (x - mean.reshape(shape)) * d_gain.reshape(shape)
        if weight and _nonzero(weight_t):
            out = out + (x - mean.reshape(shape)) * (scale * weight_t).reshape(shape)
        if _nonzero(bias_t):
            out = out + bias_t.reshape(shape)
        return out


class FastRules(TorchFunctionMode):
    """While active, linear layers, convolutions and batch norm in eval mode run through rules
    whose forward derivative skips zero weight tangents; ``block`` names the block being run,
    and the blocks that ran ``scaled_dot_product_attention`` are kept in ``attention``."""

    def __init__(self) -> None:
        super().__init__()
        self.block: int | None = None
        self.attention: set[int] = set()
        self.primals = _Primals()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _attends(func, kwargs) and self.block is not None:
            self.attention.add(self.block)
        if func in LINEAR_OPS and len(args) >= 2:
            return _linear_in_input(self.primals, func, args, kwargs)
        if func is F.batch_norm:
            bound = dict(zip(BATCH_NORM_ARGUMENTS, args, strict=False)) | kwargs
            stats = bound.get("running_mean") is not None and bound.get("running_var") is not None
            if stats and not bound.get("training", False):
                return _BatchNormEval.apply(
                    bound["input"],
                    bound["running_mean"],
                    bound["running_var"],
                    bound.get("weight"),
                    bound.get("bias"),
                    bound.get("eps", 1e-5),
                )
        return func(*args, **kwargs)


def _attends(func: Callable, kwargs: dict) -> bool:
    """Whether a call runs ``scaled_dot_product_attention``: itself, or the attention of
    ``nn.MultiheadAttention`` without its weights (whose inside a mode does not see)."""
    if func is F.scaled_dot_product_attention:
        return True
    return func is F.multi_head_attention_forward and kwargs.get("need_weights") is False


def _linear_in_input(primals: _Primals, func: Callable, args: tuple, kwargs: dict) -> Tensor:
    x, weight, *rest = args
    kwargs = dict(kwargs)
    bias = rest.pop(0) if rest else kwargs.pop("bias", None)
    op = functools.partial(func, **kwargs) if kwargs else func
    return _LinearInInput.apply(primals, op, x, weight, bias, *rest)


class BlockPushes:
    """``J_i v_i`` of every block ``f_i`` at its input ``x_i`` by one JVP of all of them.

    The JVP runs with :class:`FastRules`. One that fails where attention ran is run again, this
    time and every time after, with the math attention backend (``math_attention``); one that
    still fails, without the rules (a model that runs its own transforms inside, which the
    rules do not follow). Raises what the last try raised when none goes through.
    """

    def __init__(
        self, functions: Sequence[Callable[[Tensor], Tensor]], inputs: Sequence[Tensor]
    ) -> None:
        self.functions = list(functions)
        self.inputs = tuple(inputs)
        self.math_attention = False
        self.fast = True
        self.rules = FastRules()

    @property
    def attention(self) -> set[int]:
        """The blocks that ran ``scaled_dot_product_attention``."""
        return self.rules.attention

    def _stacked(self, *xs: Tensor) -> tuple[Tensor, ...]:
        outputs = []
        for index, (f, x) in enumerate(zip(self.functions, xs, strict=True)):
            self.rules.block = index
            outputs.append(f(x))
        self.rules.block = None
        return tuple(outputs)

    def _push(self, vectors: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        self.rules.primals.position = 0
        backend = nullcontext()
        if self.math_attention:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            backend = sdpa_kernel(SDPBackend.MATH)
        with backend, self.rules if self.fast else nullcontext():
            return jvp(self._stacked, self.inputs, tuple(vectors))[1]

    def _fall_back(self, error: Exception) -> bool:
        """Take the JVPs the next way after ``error``; False when no way is left."""
        if not self.math_attention and self.rules.attention and isinstance(error, NO_FORWARD):
            self.math_attention = True
        elif self.fast:
            self.fast = False
        else:
            return False
        return True

    def __call__(self, vectors: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        while True:
            try:
                return self._push(vectors)
            except Exception as error:
                if not self._fall_back(error):
                    raise

    def method(self, index: int) -> str:
        """How block ``index``'s products were taken: ``jvp``, or ``jvp-math-attention`` where
        its attention ran through the math backend."""
        return "jvp-math-attention" if self.math_attention and index in self.attention else "jvp"
