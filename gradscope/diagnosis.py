"""From numbers to a verdict: pure rules, no torch (see DESIGN.md, "Verdict")."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from gradscope.fixes import (
    RELU_LIKE,
    activation_clause,
    activation_key,
    build_fixes,
    chi_clause,
    chi_far_from_one,
    dead_clause,
    dominant_activation,
    inactive_blocks,
    plain_chi,
    residual_clause,
    residual_layers,
    saturates,
    saturation_clause,
    spread_clause,
    suggested_gate_bias,
    unseen_clause,
    wants_skips,
)
from gradscope.report import STATUSES, DepthLayer, DepthStack, Finding, Fix, RecurrentCore

#: sigma_max this many times the spectral radius marks a strongly non-normal Jacobian.
NON_NORMAL_RATIO = 10.0


def memory_horizon(top_exponent: float, epsilon: float) -> float | None:
    """``ln(1/eps) / |lambda_1|``: the lag over which the gradient changes by 1/eps.

    ``None`` when it is unbounded (lambda_1 = 0) or unknown (NaN); 0 when lambda_1 = -inf.
    """
    if math.isnan(top_exponent) or top_exponent == 0:
        return None
    return math.log(1 / epsilon) / abs(top_exponent)


def core_status(top_exponent: float, finite: bool, horizon: int, epsilon: float) -> str:
    """The verdict for one core over ``horizon`` steps at tolerance ``epsilon``."""
    if not finite or math.isnan(top_exponent) or top_exponent == math.inf:
        return "nonfinite"
    tau = memory_horizon(top_exponent, epsilon)
    if tau is None or tau >= horizon:
        return "healthy"
    return "vanishing" if top_exponent < 0 else "exploding"


def worst(statuses: list[str]) -> str:
    """The worst status: nonfinite > exploding > vanishing > healthy."""
    return max(statuses, key=STATUSES.index, default="healthy")


def with_horizons(
    cores: list[RecurrentCore], requested: int | None, probe_steps: int
) -> list[RecurrentCore]:
    """Each core's distance L: ``--horizon`` when given, else the steps the core ran.

    By default L is the probe length, but a core that ran fewer steps (a decoder, a cell called
    a few times) cannot be asked to carry information further than it ran.
    """
    return [
        dataclasses.replace(core, horizon=requested or min(probe_steps, core.steps))
        for core in cores
    ]


def assess_cores(cores: list[RecurrentCore], epsilon: float) -> list[RecurrentCore]:
    """The cores with their status set by the verdict rule over their own horizon."""
    return [
        dataclasses.replace(
            core, status=core_status(core.top_exponent, core.finite, core.horizon, epsilon)
        )
        for core in cores
    ]


def _where(core: RecurrentCore) -> dict:
    return {"module": core.name, "layer": core.layer, "direction": core.direction}


def _rate(core: RecurrentCore, epsilon: float, verb: str) -> str:
    """``encoder (rnn_tanh): gradients shrink 1000x every 10.2 steps (lambda_1 = -0.675/step)``."""
    return (
        f"{core.label} ({core.cell}): gradients {verb} {1 / epsilon:g}x every "
        f"{memory_horizon(core.top_exponent, epsilon):.1f} steps "
        f"(lambda_1 = {core.top_exponent:+.3f}/step)"
    )


def _custom_vanishing_advice(core: RecurrentCore) -> str:
    """Why a custom cell vanishes: its own step Jacobian, the one thing gradscope sees of it.

    A custom cell has no W_hh and no gate gradscope can read, and it may be gated already, so
    neither Pascanu's bound nor "use a gated cell" applies; a skip on the state does, whatever
    the cell computes.
    """
    rho = core.jacobian["spectral_radius"]["median"]
    return (
        f"the cell's own step Jacobian ds_t/ds_{{t-1}} contracts its {core.state_size}-entry "
        f"state along this trajectory (median spectral radius {rho:.2f}); gates inside the "
        "cell, if any, might learn to hold information, but gradscope cannot see them; a skip "
        "on the state, s' = s + f(x, s), adds the identity to that Jacobian"
    )


def _vanishing_advice(core: RecurrentCore, epsilon: float) -> str:
    """Why it vanishes: gates to train open (LSTM/GRU), structure (RNN), or a custom step."""
    if core.cell == "custom":
        return _custom_vanishing_advice(core)
    if core.cell in ("lstm", "gru"):
        gate = "forget" if core.cell == "lstm" else "update"
        gates = core.gates or {}
        advice = (
            f"the {gate} gate averages {gates.get('mean', math.nan):.2f}: the gates start nearly "
            "closed and training must first learn to keep information; a total "
            f"{gate}-gate bias of {suggested_gate_bias(core.horizon, epsilon):.1f} shortens that"
        )
        if gates.get("bias_mean") is None:
            advice += " (the module has bias=False: build it with bias=True first)"
        return advice
    weights = core.weights or {}
    sigma, bound = weights.get("sigma_max", math.nan), weights.get("pascanu_bound", 1.0)
    if sigma < bound:
        cause = (
            f"sigma_max(W_hh) = {sigma:.2f} is below Pascanu's bound 1/gamma = {bound:g}, so it "
            "vanishes whatever the input"
        )
    else:
        cause = (
            f"saturation and W_hh (spectral radius {weights.get('spectral_radius', math.nan):.2f}"
            ") contract the state along this trajectory"
        )
    return f"{cause}; a vanilla RNN cannot learn to hold information as gates do: use a gated cell"


#: The stable id of the finding each failing status raises.
ERROR_IDS = {
    "vanishing": "vanishing-gradient",
    "exploding": "exploding-gradient",
    "nonfinite": "nonfinite-values",
}


def _error(core: RecurrentCore, message: str, fixes: list[str]) -> Finding:
    """The finding behind an assessed core's failing status."""
    return Finding(ERROR_IDS[core.status], core.status, "error", _where(core), message, fixes)


#: Fixes for a vanishing core by cell; a vanilla RNN gets a gated cell. A custom cell gets a
#: skip on its state, not a gated cell: it may be gated already, and what its state holds (one
#: tensor, or a pair) is the user's design, so an ``nn.LSTMCell`` of the right size is a guess.
VANISHING_FIXES = {
    "lstm": ["forget-gate-bias"],
    "gru": ["update-gate-bias"],
    "custom": ["residual-connections"],
}


def _vanishing(core: RecurrentCore, epsilon: float) -> Finding:
    fixes = VANISHING_FIXES.get(core.cell, ["use-lstm", "use-gru"])
    message = (
        f"{_rate(core, epsilon, 'shrink')}, short of the {core.horizon}-step horizon; "
        f"{_vanishing_advice(core, epsilon)}."
    )
    return _error(core, message, fixes)


def _exploding(core: RecurrentCore, epsilon: float) -> Finding:
    """Clipping for any core; a bounded W_hh only where there is one (not in a custom cell)."""
    fixes = ["clip-grad-norm"]
    if core.cell in ("rnn_tanh", "rnn_relu"):
        fixes += ["spectral-norm", "orthogonal-init"]
    message = (
        f"{_rate(core, epsilon, 'grow')}, within the {core.horizon}-step horizon; updates will "
        "blow up without clipping."
    )
    return _error(core, message, fixes)


def _nonfinite(core: RecurrentCore) -> Finding:
    suspects = (
        "the weights, the cell's own forward (and a --probe file)"
        if core.cell == "custom"
        else "the weights (and a --probe file)"
    )
    message = (
        f"{core.label} ({core.cell}): NaN or Inf in the states, gradients or Jacobians on the "
        f"probe; check {suspects} for NaN or Inf, then clip gradients in training."
    )
    return _error(core, message, ["clip-grad-norm"])


def _non_normal(core: RecurrentCore) -> Finding | None:
    jacobian = core.jacobian
    rho = jacobian["spectral_radius"]["median"]
    sigma = jacobian["sigma_max"]["median"]
    if not (sigma > 1 and sigma > NON_NORMAL_RATIO * rho):
        return None
    return Finding(
        id="transient-growth",
        kind="exploding",
        severity="warning",
        where=_where(core),
        message=(
            f"{core.label} ({core.cell}): the step Jacobian is far from normal (median "
            f"sigma_max {sigma:.3g} vs spectral radius {rho:.3g}): gradients can grow for "
            "several steps before they settle to lambda_1."
        ),
        fixes=_non_normal_fixes(core),
    )


def _non_normal_fixes(core: RecurrentCore) -> list[str]:
    """Bound or orthogonalise W_hh; a custom cell has none gradscope can name, so clip."""
    if core.cell == "custom":
        return ["clip-grad-norm"]
    return ["spectral-norm", "orthogonal-init"]


def _by_severity(findings: list[Finding]) -> list[Finding]:
    """Errors first, the worst kind first; otherwise in the order found."""
    return sorted(findings, key=lambda f: (f.severity != "error", -STATUSES.index(f.kind)))


def findings_for(cores: list[RecurrentCore], epsilon: float) -> list[Finding]:
    """Every finding on assessed cores: errors first, the worst kind first."""
    findings = []
    for core in cores:
        if core.status == "nonfinite":
            findings.append(_nonfinite(core))
            continue
        if core.status == "vanishing":
            findings.append(_vanishing(core, epsilon))
        elif core.status == "exploding":
            findings.append(_exploding(core, epsilon))
        warning = _non_normal(core)
        if warning is not None:
            findings.append(warning)
    return _by_severity(findings)


# --- deep stacks: the same rule over depth ---------------------------------------------------


def depth_ratio(stack: DepthStack) -> float:
    """The gradient at the input side over the output side; 1 when neither carries any."""
    if stack.output_grad_norm == 0:
        return 1.0 if stack.input_grad_norm == 0 else math.inf
    return stack.input_grad_norm / stack.output_grad_norm


def _first_nonfinite(stack: DepthStack, layers: Sequence[DepthLayer]) -> str | None:
    """Where NaN or Inf first shows among the numbers the verdict reads; None if nowhere.

    A block's ``gain`` counts only where a gradient reached its output: with none, the gain is
    0/0 by construction, not a sign of NaN in the model.
    """
    if not all(math.isfinite(x) for x in (stack.input_grad_norm, stack.output_grad_norm)):
        return "the stack's input or output gradient"
    for layer in layers:
        numbers = [layer.grad_norm, layer.chi]
        if layer.grad_norm != 0:
            numbers.append(layer.gain)
        if layer.branch_chi is not None:
            numbers.append(layer.branch_chi)
        if not all(math.isfinite(x) for x in numbers):
            return layer.name
    return None


def depth_status(stack: DepthStack, layers: Sequence[DepthLayer], epsilon: float) -> str:
    """The verdict over the stack: the input-side gradient against the output side's."""
    if _first_nonfinite(stack, layers) is not None:
        return "nonfinite"
    ratio = depth_ratio(stack)
    if ratio < epsilon:
        return "vanishing"
    if ratio > 1 / epsilon:
        return "exploding"
    return "healthy"


def assess_depth(stack: DepthStack, layers: list[DepthLayer], epsilon: float) -> DepthStack:
    """The stack with its status set by the verdict rule over its depth (``horizon`` = blocks)."""
    return dataclasses.replace(
        stack, status=depth_status(stack, layers, epsilon), horizon=stack.blocks
    )


def _depth_where(stack: DepthStack, layers: Sequence[DepthLayer]) -> dict:
    return {
        "stack": "depth",
        "blocks": stack.blocks,
        "first": layers[0].name if layers else None,
        "last": layers[-1].name if layers else None,
    }


def _depth_rate(stack: DepthStack) -> str:
    """``depth (50 blocks): the gradient shrinks 10^30.7 from the output to the input ...``."""
    label = f"depth ({stack.blocks} blocks)"
    if not math.isfinite(stack.decades):
        return f"{label}: no gradient reaches the input side of the stack"
    verb = "shrinks" if stack.decades < 0 else "grows"
    return (
        f"{label}: the gradient {verb} 10^{abs(stack.decades):.1f} from the output to the "
        f"input (x{stack.gain_per_block:.3g} per block)"
    )


def _depth_error(
    stack: DepthStack,
    layers: Sequence[DepthLayer],
    clauses: list[str | None],
    fixes: list[str],
) -> Finding:
    """The finding behind an assessed stack's failing status; ``None`` clauses are left out."""
    message = "; ".join(clause for clause in clauses if clause) + "."
    kind = stack.status
    return Finding(ERROR_IDS[kind], kind, "error", _depth_where(stack, layers), message, fixes)


def _depth_vanishing_fixes(stack: DepthStack, layers: Sequence[DepthLayer]) -> list[str]:
    """Skips where blocks keep their shape; then the activation, the init, normalisation."""
    fixes = ["residual-connections"] if wants_skips(stack, layers) else []
    activation = dominant_activation(layers)
    if saturates(activation):
        fixes += ["change-activation", "init-gain"]
    elif chi_far_from_one(plain_chi(layers)):
        fixes.append("init-gain")
        if activation_key(activation) in (None, *RELU_LIKE):
            fixes.append("orthogonal-init")
    if inactive_blocks(layers):
        fixes.append("normalization")
    return fixes


def _depth_vanishing(stack: DepthStack, layers: Sequence[DepthLayer]) -> Finding:
    clauses = [_depth_rate(stack)]
    if saturates(dominant_activation(layers)):
        clauses.append(f"{activation_clause(layers)}: {chi_clause(stack, layers)}")
    elif chi_far_from_one(plain_chi(layers)):
        clauses.append(chi_clause(stack, layers))
    clauses += [
        saturation_clause(layers),
        dead_clause(layers),
        unseen_clause(layers),
        spread_clause(stack),
    ]
    return _depth_error(stack, layers, clauses, _depth_vanishing_fixes(stack, layers))


def _depth_exploding(stack: DepthStack, layers: Sequence[DepthLayer]) -> Finding:
    """Residual stacks: scale the branches; plain ones: the init; clipping for both."""
    clauses = [_depth_rate(stack)]
    if stack.residual_blocks > 0:
        fixes = ["scale-residual-branch", "clip-grad-norm"]
        if residual_layers(layers):
            clauses.append(residual_clause(layers))
    else:
        fixes = ["init-gain", "orthogonal-init", "clip-grad-norm"]
        if not math.isnan(plain_chi(layers)):
            clauses.append(chi_clause(stack, layers))
    clauses += [spread_clause(stack), "updates will blow up without clipping"]
    return _depth_error(stack, layers, clauses, fixes)


def _depth_nonfinite(stack: DepthStack, layers: Sequence[DepthLayer]) -> Finding:
    where = _first_nonfinite(stack, layers)
    clauses = [
        f"depth ({stack.blocks} blocks): NaN or Inf in the gradients or block gains on the "
        f"probe, first at {where}",
        "check the weights (and a --probe file) for NaN or Inf, then clip gradients in training",
    ]
    return _depth_error(stack, layers, clauses, ["clip-grad-norm"])


def depth_findings(stack: DepthStack, layers: Sequence[DepthLayer]) -> list[Finding]:
    """The finding behind an assessed stack's failing status (none when healthy)."""
    if stack.status == "nonfinite":
        return [_depth_nonfinite(stack, layers)]
    if stack.status == "vanishing":
        return [_depth_vanishing(stack, layers)]
    if stack.status == "exploding":
        return [_depth_exploding(stack, layers)]
    return []


def diagnose(
    cores: list[RecurrentCore],
    epsilon: float,
    depth: DepthStack | None = None,
    layers: Sequence[DepthLayer] = (),
) -> tuple[str, list[RecurrentCore], DepthStack | None, list[Finding], list[Fix]]:
    """Overall status, assessed cores, the assessed stack, findings and the fixes they call for.

    Each core is judged over its own ``horizon`` (see :func:`with_horizons`), the deep stack
    (when measured) over its blocks; the overall status is the worst of them.
    """
    assessed = assess_cores(cores, epsilon)
    findings = findings_for(assessed, epsilon)
    statuses = [core.status for core in assessed]
    stack = None
    if depth is not None:
        stack = assess_depth(depth, list(layers), epsilon)
        findings = _by_severity(findings + depth_findings(stack, layers))
        statuses.append(stack.status)
    fixes = build_fixes(findings, assessed, epsilon, stack, layers)
    return worst(statuses), assessed, stack, findings, fixes
