"""Hand-built reports (no torch): inputs for the pure diagnosis and rendering tests."""

from __future__ import annotations

import math

from gradscope.report import RecurrentCore

#: The keys DESIGN.md promises in the JSON report, at the top and for each recurrent core.
TOP_KEYS = {
    "schema_version",
    "gradscope_version",
    "status",
    "settings",
    "model",
    "input_grad_norm",
    "recurrent",
    "layers",
    "findings",
    "fixes",
}
CORE_KEYS = {
    "name",
    "cell",
    "layer",
    "direction",
    "input_size",
    "hidden_size",
    "state_size",
    "steps",
    "grad_norm",
    "lyapunov",
    "memory_horizon",
    "jacobian",
    "status",
}

SETTINGS = {
    "steps": 100,
    "batch": 1,
    "seed": 0,
    "dtype": "float64",
    "probe": "gaussian",
    "input_shape": None,
    "horizon": 100,
    "epsilon": 1e-3,
    "burn_in": 20,
    "exponents": 8,
    "spectrum_steps": "auto",
    "device": "cpu",
}
MODEL = {"path": "net.pt", "format": "state-dict", "class": "Net", "parameters": 26122, "notes": []}


def core(
    cell: str = "rnn_tanh",
    exponent: float = -0.675,
    name: str = "encoder",
    steps: int = 100,
    epsilon: float = 1e-3,
    **fields,
) -> RecurrentCore:
    """A measured core with gradients decaying at ``exponent`` per step from lag 0."""
    hidden = fields.pop("hidden_size", 128)
    state = 2 * hidden if cell == "lstm" else hidden
    tau = None if exponent == 0 or math.isnan(exponent) else math.log(1 / epsilon) / abs(exponent)
    gates = {"gate": "forget" if cell == "lstm" else "update", "mean": 0.5, "bias_mean": 0.0}
    weights = {"spectral_radius": 0.6, "sigma_max": 1.12, "pascanu_bound": 1.0}
    defaults = dict(
        name=name,
        cell=cell,
        layer=0,
        direction="forward",
        input_size=64,
        hidden_size=hidden,
        state_size=state,
        steps=steps,
        grad_norm=[math.exp(exponent * (steps - 1 - t)) for t in range(steps)],
        lyapunov=[exponent, exponent - 0.1],
        memory_horizon=tau,
        jacobian={
            "spectral_radius": {"median": 0.52, "max": 0.61},
            "sigma_max": {"median": 0.9, "max": 1.04},
            "samples": steps,
        },
        batch_first=cell != "custom",
        is_cell=cell == "custom",
        horizon=100,
        gates=gates if cell in ("lstm", "gru") else None,
        weights=weights if cell.startswith("rnn") else None,
    )
    return RecurrentCore(**(defaults | fields))
