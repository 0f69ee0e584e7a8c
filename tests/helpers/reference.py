"""Brute-force twins of gradscope's measurements: slow on purpose, obviously right.

Everything here steps PyTorch's *own* modules one time step at a time and differentiates them
with ``torch.autograd.functional.jacobian`` or a plain backward pass; nothing comes from
gradscope's functional cells.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

SUFFIX_PARAMS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")


def single_layer(module: nn.Module, layer: int, reverse: bool) -> nn.Module:
    """A one-layer, one-direction, time-major copy of one (layer, direction) of ``module``."""
    suffix = f"_l{layer}" + ("_reverse" if reverse else "")
    weight_ih = getattr(module, "weight_ih" + suffix)
    kwargs = {"bias": module.bias}
    if isinstance(module, nn.RNN):
        kwargs["nonlinearity"] = module.nonlinearity
    if isinstance(module, nn.LSTM):
        kwargs["proj_size"] = module.proj_size
    copy = type(module)(weight_ih.shape[1], module.hidden_size, **kwargs).to(weight_ih)
    with torch.no_grad():
        for name in SUFFIX_PARAMS:
            if hasattr(copy, name + "_l0"):
                getattr(copy, name + "_l0").copy_(getattr(module, name + suffix))
    return copy


def layer_input(module: nn.Module, x: Tensor, layer: int) -> Tensor:
    """The input of ``layer`` (time-major), from PyTorch's own stack of the layers below."""
    if layer == 0:
        return x
    kwargs = {"bias": module.bias, "bidirectional": module.bidirectional, "num_layers": layer}
    if isinstance(module, nn.RNN):
        kwargs["nonlinearity"] = module.nonlinearity
    if isinstance(module, nn.LSTM):
        kwargs["proj_size"] = module.proj_size
    below = type(module)(module.input_size, module.hidden_size, **kwargs).to(x)
    below.load_state_dict(
        {k: v for k, v in module.state_dict().items() if int(k.split("_l")[1][0]) < layer}
    )
    return below(x)[0]


def state_size(cell: nn.Module) -> tuple[int, int]:
    """(size of h, size of c) of a one-layer module or a cell; c is 0 except for LSTM."""
    out = getattr(cell, "proj_size", 0) or cell.hidden_size
    is_lstm = isinstance(cell, (nn.LSTM, nn.LSTMCell))
    return out, (cell.hidden_size if is_lstm else 0)


def module_step(cell: nn.Module, x_t: Tensor, s: Tensor) -> Tensor:
    """One step of PyTorch's own one-layer module or cell on a flat state (h, c)."""
    h_size, c_size = state_size(cell)
    h, c = s[..., :h_size], s[..., h_size:]
    is_cell = isinstance(cell, (nn.RNNCell, nn.LSTMCell, nn.GRUCell))
    if is_cell:
        out = cell(x_t, (h, c) if c_size else h)
        return torch.cat(out, dim=-1) if c_size else out
    hx = (h.unsqueeze(0), c.unsqueeze(0)) if c_size else h.unsqueeze(0)
    _, state = cell(x_t.unsqueeze(0), hx)
    return torch.cat((state[0][0], state[1][0]), -1) if c_size else state[0]


def trajectory(cell: nn.Module, inputs: Tensor, reverse: bool = False) -> list[tuple]:
    """(x_t, s_before) for each step in processing order, from zero state; inputs (T, B, F)."""
    h_size, c_size = state_size(cell)
    s = inputs.new_zeros(inputs.shape[1], h_size + c_size)
    order = range(len(inputs) - 1, -1, -1) if reverse else range(len(inputs))
    steps = []
    with torch.no_grad():
        for t in order:
            steps.append((inputs[t], s))
            s = module_step(cell, inputs[t], s)
    return steps


def jacobians(cell: nn.Module, steps: list[tuple]) -> list[Tensor]:
    """``ds'/ds`` of batch element 0 at each step, by torch.autograd.functional.jacobian."""
    return [
        torch.autograd.functional.jacobian(
            lambda s, x=x: module_step(cell, x[:1], s[None])[0], s[0]
        )
        for x, s in steps
    ]


def qr_lyapunov(jacobians: list[Tensor], count: int, burn_in: int, seed: int) -> list[float]:
    """Benettin's QR method over explicit Jacobians, with gradscope's seeded initial frame."""
    n = jacobians[0].shape[0]
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, count, generator=generator, dtype=torch.float64)
    frame = torch.linalg.qr(noise.to(jacobians[0]))[0]
    total = torch.zeros(count, dtype=torch.float64)
    for t, jacobian in enumerate(jacobians):
        pushed = jacobian @ frame
        frame, r = torch.linalg.qr(pushed)
        if t >= burn_in:
            stretch = r.diagonal().abs()
            # a direction shrunk to rounding level was annihilated: exactly 0 in exact arithmetic
            zero = stretch < 1e-12 * pushed.norm(dim=0).max()
            total += torch.where(zero, -math.inf, stretch.log())
    return sorted((total / (len(jacobians) - burn_in)).tolist(), reverse=True)


def spectral_radius(matrix: Tensor) -> float:
    """Largest eigenvalue modulus, by a dense eigendecomposition."""
    return float(torch.linalg.eigvals(matrix).abs().max())


def sigma_max(matrix: Tensor) -> float:
    """Largest singular value, by a dense SVD."""
    return float(torch.linalg.svdvals(matrix)[0])


def unit_projection(size: int, seed: int) -> Tensor:
    """gradscope's loss direction: a seeded unit vector (documented in gradscope.probe)."""
    generator = torch.Generator().manual_seed(seed + 1)
    w = torch.randn(size, generator=generator, dtype=torch.float64)
    return w / w.norm()


def ln(value: float) -> float:
    """Natural log, -inf at zero."""
    return math.log(value) if value > 0 else -math.inf


def stacked_state_gradients(module: nn.Module, inputs: Tensor, seed: int) -> dict:
    """``||dL/ds_t||`` per (layer, direction index), in time order, for a bare recurrent module.

    PyTorch's own one-layer copies are stepped one step at a time, layer after layer; the loss is
    gradscope's: <w, output at the last time step>, summed over the batch. ``inputs`` time-major.
    """
    directions = 2 if module.bidirectional else 1
    below, states_of = inputs, {}
    for layer in range(module.num_layers):
        outputs = []
        for d in range(directions):
            cell = single_layer(module, layer, reverse=d == 1)
            h_size, c_size = state_size(cell)
            s = inputs.new_zeros(inputs.shape[1], h_size + c_size)
            states = [None] * len(below)
            order = range(len(below) - 1, -1, -1) if d == 1 else range(len(below))
            for t in order:
                s = module_step(cell, below[t], s)
                s.retain_grad()
                states[t] = s
            states_of[(layer, d)] = states
            outputs.append(torch.stack([state[:, :h_size] for state in states]))
        below = torch.cat(outputs, dim=-1)
    loss = (below[-1] @ unit_projection(below.shape[-1], seed).to(below)).sum()
    loss.backward()

    def pooled(s: Tensor) -> float:
        grad = torch.zeros_like(s) if s.grad is None else s.grad
        return float(grad.pow(2).sum(-1).mean().sqrt())

    return {key: [pooled(s) for s in states] for key, states in states_of.items()}


def twin_statistics(
    jacobians: list[list[Tensor]], count: int, burn_in: int, seed: int
) -> tuple[Tensor, Tensor, list[float]]:
    """Spectral radius and sigma_max of every Jacobian, and the QR exponents of each batch
    element's sequence averaged over the batch; ``jacobians[b][t]``."""
    every = [j for per_element in jacobians for j in per_element]
    rho = torch.tensor([spectral_radius(j) for j in every], dtype=torch.float64)
    sigma = torch.tensor([sigma_max(j) for j in every], dtype=torch.float64)
    exponents = torch.tensor(
        [qr_lyapunov(per_element, count, burn_in, seed) for per_element in jacobians],
        dtype=torch.float64,
    )
    return rho, sigma, exponents.mean(0).tolist()
