"""Hand-built reports (no torch): inputs for the pure diagnosis and rendering tests."""

from __future__ import annotations

import math

from gradscope.diagnosis import diagnose
from gradscope.fixes import build_fixes
from gradscope.report import (
    DepthLayer,
    DepthStack,
    Extremes,
    Finding,
    Fix,
    GateSummary,
    JacobianSummary,
    ModelDescription,
    RecurrentCore,
    Report,
    Settings,
    WeightSummary,
)

#: The keys docs/design.md promises in the JSON report, at the top and for each recurrent core.
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

SETTINGS = Settings(steps=100, batch=1, distance=100, burn_in=20)
MODEL = ModelDescription("net.pt", "state-dict", "Net", parameters=26122)


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
    gates = GateSummary("forget" if cell == "lstm" else "update", mean=0.5, bias_mean=0.0)
    weights = WeightSummary(spectral_radius=0.6, sigma_max=1.12, pascanu_bound=1.0)
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
        jacobian=JacobianSummary(Extremes(0.52, 0.61), Extremes(0.9, 1.04), samples=steps),
        batch_first=cell != "custom",
        is_cell=cell == "custom",
        distance=100,
        gates=gates if cell in ("lstm", "gru") else None,
        weights=weights if cell.startswith("rnn") else None,
    )
    return RecurrentCore(**(defaults | fields))


def mlp_layers(
    blocks: int = 50,
    decades: float = -30.7,
    activation: str | None = "Sigmoid",
    chi: float | None = None,
    width: int = 512,
    parent: str = "",
    **fields,
) -> list[DepthLayer]:
    """``nn.Sequential(Linear, activation, Linear, activation, ...)`` as the depth view sees it.

    Each block is a Linear and its activation (children ``2i`` and ``2i + 1`` of ``parent``;
    child ``i`` alone without an activation), passing back ``10 ** (decades / blocks)`` of the
    gradient; the output gradient is 1.
    """
    gain = 10 ** (decades / blocks)
    prefix = f"{parent}." if parent else ""
    layers = []
    children = 2 if activation else 1
    for index in range(blocks):
        indices = list(range(children * index, children * (index + 1)))
        paths = [f"{prefix}{child}" for child in indices]
        block = dict(
            name="+".join(paths),
            type="Linear" + (f"+{activation}" if activation else ""),
            modules=paths,
            input_size=width,
            output_size=width,
            grad_norm=gain ** (blocks - 1 - index),
            gain=gain,
            chi=gain**2 if chi is None else chi,
            sigma_max=2.0 * gain,
            activation=activation,
            parent=parent,
            indices=indices,
        )
        layers.append(DepthLayer(**(block | fields)))
    return layers


def resnet_layers(
    blocks: int = 50, alpha: float = 1.0, width: int = 512, parent: str = "blocks", **fields
) -> list[DepthLayer]:
    """Blocks ``x + alpha * fc2(relu(fc1(x)))``, one module each: sqrt(1 + alpha^2) per block."""
    gain = math.sqrt(1 + alpha**2)
    layers = []
    for index in range(blocks):
        name = f"{parent}.{index}"
        block = dict(
            name=name,
            type="Block",
            modules=[name],
            input_size=width,
            output_size=width,
            grad_norm=gain ** (blocks - 1 - index),
            gain=gain,
            chi=1 + alpha**2,
            sigma_max=1 + 2.9 * alpha,
            residual=True,
            branch_chi=alpha**2,
            parent=parent,
            indices=[index],
            branch_last=f"{name}.fc2",
        )
        layers.append(DepthLayer(**(block | fields)))
    return layers


def depth_stack(layers: list[DepthLayer], spread: float | None = None, **fields) -> DepthStack:
    """The stack summary that ``layers`` imply (or the end gradients given), as measured."""
    output_grad_norm = fields.pop("output_grad_norm", layers[-1].grad_norm)
    input_grad_norm = fields.pop("input_grad_norm", layers[0].grad_norm * layers[0].gain)
    ratio = input_grad_norm / output_grad_norm if output_grad_norm else math.nan
    decades = math.log10(ratio) if ratio > 0 else -math.inf if ratio == 0 else math.nan
    defaults = dict(
        blocks=len(layers),
        input_grad_norm=input_grad_norm,
        output_grad_norm=output_grad_norm,
        decades=decades,
        gain_per_block=ratio ** (1 / len(layers)),
        sigma_max=None,
        rms_singular_value=ratio,
        spread=spread,
        residual_blocks=sum(layer.residual for layer in layers),
        granularity="blocks",
        estimator={"chi_probes": 8, "power_iterations": 3},
    )
    return DepthStack(**(defaults | fields))


def judge(
    cores: list[RecurrentCore],
    epsilon: float,
    stack: DepthStack | None = None,
    layers: list[DepthLayer] = (),
) -> tuple[str, list[RecurrentCore], DepthStack | None, list[Finding], list[Fix]]:
    """Diagnose, then advise: (status, judged cores, judged stack, findings, fixes)."""
    diagnosis = diagnose(cores, epsilon, stack, layers)
    fixes = build_fixes(diagnosis, epsilon)
    return diagnosis.status, diagnosis.cores, diagnosis.stack, diagnosis.findings, fixes


def report_of(*cores: RecurrentCore) -> Report:
    """A report of judged sample cores, as ``gradscope.analyze`` would build it."""
    status, assessed, _, findings, fixes = judge(list(cores), 1e-3)
    return Report(
        status=status,
        settings=SETTINGS,
        model=MODEL,
        gradscope_version="0.1.0",
        input_grad_norm=[1.0] * 100,
        recurrent=assessed,
        findings=findings,
        fixes=fixes,
    )
