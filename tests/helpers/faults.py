"""Models with a fault planted in a known place, and twins that find it another way: module
hooks, forward in execution order and backward in the order autograd runs them."""

from __future__ import annotations

import math

import torch
from torch import nn


class LogBlock(nn.Module):
    """A block whose forward takes the log of its (possibly negative) pre-activation."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x):
        return torch.log(self.linear(x))  # planted: log of a negative value


class HandNorm(nn.Module):
    """A hand-written normalisation without an epsilon: 0/0 where a row has no variance."""

    def forward(self, x):
        centred = x - x.mean(-1, keepdim=True)
        return centred / centred.pow(2).mean(-1, keepdim=True).sqrt()  # planted: 0 / 0


class NormOf(nn.Module):
    """The length of each row: finite forward, an infinite derivative at a zero row."""

    def forward(self, x):
        return x.pow(2).sum(-1, keepdim=True).sqrt()  # planted: d sqrt / dx at 0


def zeroed(linear: nn.Linear) -> nn.Linear:
    """``linear`` with zero weights and bias: its output is 0 whatever it reads."""
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.zero_()
    return linear


def mlp_with_inf_weight(layer: int = 3, layers: int = 6, width: int = 16) -> nn.Sequential:
    """``layers`` Linear+ReLU blocks; one weight of block ``layer`` (from 1) is Inf."""
    torch.manual_seed(0)
    model = nn.Sequential(
        *[nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(layers)]
    )
    with torch.no_grad():
        model[layer - 1][0].weight[0, 0] = math.inf
    return model


def mlp_with_log(width: int = 16) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(width, width),
        nn.Tanh(),
        LogBlock(width),
        nn.Linear(width, width),
        nn.Tanh(),
        nn.Linear(width, 4),
    )


def _after_zeros(block: nn.Module, block_width: int, width: int) -> nn.Sequential:
    """Linear, Tanh, a Linear that gives 0, then ``block`` at index 3 (giving ``block_width``
    features), then a small head."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(width, width),
        nn.Tanh(),
        zeroed(nn.Linear(width, width)),
        block,
        nn.Linear(block_width, 4),
        nn.Tanh(),
        nn.Linear(4, 4),
    )


def mlp_with_hand_norm(width: int = 16) -> nn.Sequential:
    return _after_zeros(HandNorm(), width, width)


def mlp_with_norm_of_zero(width: int = 16) -> nn.Sequential:
    return _after_zeros(NormOf(), 1, width)


def growing_rnn(gain: float = 1.27, size: int = 8) -> nn.RNN:
    """A ReLU RNN whose state grows by ``gain`` a step from a constant drive of 1: in float16
    it overflows 65504 near step 40; in float32 it does not within 100 steps."""
    rnn = nn.RNN(4, size, nonlinearity="relu")
    with torch.no_grad():
        rnn.weight_ih_l0.zero_()
        rnn.weight_hh_l0.copy_(gain * torch.eye(size))
        rnn.bias_ih_l0.fill_(1.0)
        rnn.bias_hh_l0.zero_()
    return rnn


def first_overflow_step(rnn: nn.RNN, steps: int, dtype: torch.dtype) -> int | None:
    """The twin: an ``nn.RNNCell`` with the RNN's weights stepped in a Python loop in
    ``dtype``; the first step whose state is not finite."""
    cell = nn.RNNCell(rnn.input_size, rnn.hidden_size, nonlinearity="relu")
    cell.load_state_dict({k.removesuffix("_l0"): v for k, v in rnn.state_dict().items()})
    cell = cell.to(dtype)
    h = torch.zeros(1, rnn.hidden_size, dtype=dtype)
    x = torch.zeros(1, rnn.input_size, dtype=dtype)  # the input weights are 0: x is not read
    for step in range(steps):
        h = cell(x, h)
        if not bool(torch.isfinite(h).all()):
            return step
    return None


def leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if not list(m.children())]


def first_nonfinite_output(model: nn.Module, x: torch.Tensor) -> str | None:
    """The twin of the forward origin: the first module whose output is not finite, in the
    order forward hooks fire (a module finishes after the modules it calls)."""
    order: list[str] = []

    def hook(name: str):
        def check(module, inputs, output):
            if isinstance(output, tuple):
                output = output[0]
            if not bool(torch.isfinite(output).all()):
                order.append(name)

        return check

    handles = [module.register_forward_hook(hook(name)) for name, module in model.named_modules()]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return order[0] if order else None


def first_nonfinite_gradient(model: nn.Module, x: torch.Tensor, w: torch.Tensor) -> str | None:
    """The twin of the backward origin: the first leaf module, in the order autograd computes
    its gradients, whose input or weight gradient is not finite (full backward hooks and
    parameter hooks, which fire as each gradient is made)."""
    order: list[str] = []

    def note(name: str, grads) -> None:
        if any(g is not None and not bool(torch.isfinite(g).all()) for g in grads):
            order.append(name)

    handles = []
    for name, module in leaf_modules(model):
        handles.append(
            module.register_full_backward_hook(lambda m, gi, go, name=name: note(name, gi))
        )
        for parameter in module.parameters():
            handles.append(parameter.register_hook(lambda g, name=name: note(name, [g])))
    try:
        x = x.clone().requires_grad_(True)
        (model(x) @ w).sum().backward()
    finally:
        for handle in handles:
            handle.remove()
    return order[0] if order else None
