"""Closed-form step Jacobians and JVPs of PyTorch's cells against torch.func, their twin."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import jacfwd, jvp, vjp, vmap

from gradscope.recurrent.cells import (
    CellSpec,
    input_drive,
    layer_weights,
    module_kind,
    step_function,
)
from gradscope.recurrent.linearised import jacobian_function, jvp_function, linearisation

MODULES = {
    "rnn_tanh": lambda: nn.RNN(3, 6),
    "rnn_relu": lambda: nn.RNN(3, 6, nonlinearity="relu"),
    "lstm": lambda: nn.LSTM(3, 6),
    "lstm_proj": lambda: nn.LSTM(3, 6, proj_size=4),
    "lstm_no_bias": lambda: nn.LSTM(3, 6, bias=False),
    "gru": lambda: nn.GRU(3, 6),
    "gru_no_bias": lambda: nn.GRU(3, 6, bias=False),
}
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}


def case(name: str, dtype: torch.dtype):
    torch.manual_seed(0)
    module = MODULES[name]().to(dtype)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.mul_(3)  # far from the origin: gates and tanh off their linear parts
    spec = CellSpec(module_kind(module), module.input_size, module.hidden_size, module.proj_size)
    weights = layer_weights(module, 0, False).detached()
    rows = 5
    s = torch.randn(rows, spec.state_size, dtype=dtype)
    u = input_drive(spec, weights, torch.randn(rows, 3, dtype=dtype))
    return spec, weights, s, u


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", sorted(MODULES))
def test_closed_form_jacobian_and_jvp_match_torch_func(name, dtype):
    spec, weights, s, u = case(name, dtype)
    step = step_function(spec, weights)
    twin = vmap(jacfwd(step, argnums=0))(s, u)
    closed = jacobian_function(spec, weights)(s, u)
    assert closed.shape == twin.shape == (len(s), spec.state_size, spec.state_size)
    scale = twin.abs().max()
    assert (closed - twin).abs().max() <= TOLERANCE[dtype] * scale
    v = torch.randn_like(s)
    pushed = jvp(lambda x: step(x, u), (s,), (v,))[1]
    closed_jvp = jvp_function(spec, weights)(s, u, v)
    assert (closed_jvp - pushed).abs().max() <= TOLERANCE[dtype] * pushed.abs().max()
    assert torch.allclose(
        closed_jvp,
        (closed @ v[..., None])[..., 0],
        rtol=0,
        atol=1e-10 if dtype == torch.float64 else 1e-4,
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", sorted(MODULES))
def test_closed_form_vjp_matches_torch_func(name, dtype):
    spec, weights, s, u = case(name, dtype)
    step = step_function(spec, weights)
    w = torch.randn_like(s)
    pulled = vjp(lambda x: step(x, u), s)[1](w)[0]
    closed = linearisation(spec, weights, s, u).pull(w)
    assert (closed - pulled).abs().max() <= TOLERANCE[dtype] * pulled.abs().max()
