"""Findings over time: what each judged recurrent core's numbers say, and which fixes apply."""

from __future__ import annotations

import math

from gradscope.diagnosis.rules import ERROR_IDS, is_non_normal
from gradscope.report import Evidence, Finding, FixId, RecurrentCore, Severity, Status
from gradscope.theory import memory_horizon, suggested_gate_bias


def _where(core: RecurrentCore) -> dict:
    return {"module": core.name, "layer": core.layer, "direction": core.direction}


def _rate(core: RecurrentCore, epsilon: float, verb: str) -> str:
    """``encoder (rnn_tanh): gradients shrink 1000x every 10.2 steps``."""
    return (
        f"{core.label} ({core.cell}): gradients {verb} {1 / epsilon:g}x every "
        f"{memory_horizon(core.top_exponent, epsilon):.1f} steps"
    )


def _custom_vanishing_advice(core: RecurrentCore) -> str:
    """Why a custom cell vanishes: its own step Jacobian, the one thing gradscope sees of it.

    A custom cell has no W_hh and no gate gradscope can read, and it may be gated already, so
    neither Pascanu's bound nor "use a gated cell" applies; a skip on the state does, whatever
    the cell computes.
    """
    rho = core.jacobian.spectral_radius.median
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
        mean = core.gates.mean if core.gates else math.nan
        advice = (
            f"the {gate} gate averages {mean:.2f}, so each step keeps about {mean:.0%} of its "
            "state: training must first learn to keep information, as gated cells often do "
            "(watch the horizon with gradscope.Monitor); a total "
            f"{gate}-gate bias of {suggested_gate_bias(core.distance, epsilon):.1f} shortens that"
        )
        if core.gates is None or core.gates.bias_mean is None:
            advice += " (the module has bias=False: build it with bias=True first)"
        return advice
    weights = core.weights
    sigma = weights.sigma_max if weights else math.nan
    bound = weights.pascanu_bound if weights else 1.0
    radius = weights.spectral_radius if weights else math.nan
    if sigma < bound:
        cause = (
            f"sigma_max(W_hh) = {sigma:.2f} is below Pascanu's bound 1/gamma = {bound:g}, so it "
            "vanishes whatever the input"
        )
    else:
        cause = (
            f"saturation and W_hh (spectral radius {radius:.2f}) contract the state along this "
            "trajectory"
        )
    return f"{cause}; a vanilla RNN cannot learn to hold information as gates do: use a gated cell"


def _finding(
    core: RecurrentCore,
    reason: str,
    message: str,
    fixes: list[FixId],
    kind: Status | None = None,
    id: str | None = None,
) -> Finding:
    """A finding on ``core``: an error behind its status unless ``kind`` and ``id`` say more."""
    severity = Severity.ERROR if kind is None else Severity.WARNING
    kind = Status(core.status) if kind is None else kind
    return Finding(
        id=id or ERROR_IDS[kind],
        kind=kind,
        severity=severity,
        where=_where(core),
        message=message,
        fixes=fixes,
        evidence=Evidence("core", core.key, reason),
    )


#: Fixes for a vanishing core by cell; a vanilla RNN gets a gated cell. A custom cell gets a
#: skip on its state, not a gated cell: it may be gated already, and what its state holds (one
#: tensor, or a pair) is the user's design, so an ``nn.LSTMCell`` of the right size is a guess.
VANISHING_FIXES = {
    "lstm": [FixId.FORGET_GATE_BIAS],
    "gru": [FixId.UPDATE_GATE_BIAS],
    "custom": [FixId.RESIDUAL_CONNECTIONS],
}
#: Cells with a W_hh gradscope can bound or orthogonalise.
VANILLA = ("rnn_tanh", "rnn_relu")


def _vanishing(core: RecurrentCore, epsilon: float) -> Finding:
    fixes = VANISHING_FIXES.get(core.cell, [FixId.USE_LSTM, FixId.USE_GRU])
    reason = _rate(core, epsilon, "shrink")
    message = (
        f"{reason} (lambda_1 = {core.top_exponent:+.3f}/step), short of the {core.distance}-step "
        f"horizon; {_vanishing_advice(core, epsilon)}."
    )
    return _finding(core, reason, message, fixes)


def _exploding(core: RecurrentCore, epsilon: float) -> Finding:
    """Clipping for any core; a bounded W_hh only where there is one (not in a custom cell)."""
    fixes = [FixId.CLIP_GRAD_NORM]
    if core.cell in VANILLA:
        fixes += [FixId.SPECTRAL_NORM, FixId.ORTHOGONAL_INIT]
    reason = _rate(core, epsilon, "grow")
    message = (
        f"{reason} (lambda_1 = {core.top_exponent:+.3f}/step), within the {core.distance}-step "
        "horizon; updates will blow up without clipping."
    )
    return _finding(core, reason, message, fixes)


def _nonfinite(core: RecurrentCore) -> Finding:
    suspects = (
        "the weights, the cell's own forward (and a --probe file)"
        if core.cell == "custom"
        else "the weights (and a --probe file)"
    )
    reason = (
        f"{core.label} ({core.cell}): NaN or Inf in the states, gradients or Jacobians on the "
        f"probe; check {suspects} for NaN or Inf, then clip gradients in training"
    )
    return _finding(core, reason, f"{reason}.", [FixId.CLIP_GRAD_NORM])


def _non_normal(core: RecurrentCore) -> Finding:
    """Bound or orthogonalise W_hh; a custom cell has none gradscope can name, so clip."""
    rho = core.jacobian.spectral_radius.median
    sigma = core.jacobian.sigma_max.median
    reason = (
        f"{core.label} ({core.cell}): the step Jacobian is far from normal (median "
        f"sigma_max {sigma:.3g} vs spectral radius {rho:.3g}): gradients can grow for "
        "several steps before they settle to lambda_1"
    )
    fixes = (
        [FixId.CLIP_GRAD_NORM]
        if core.cell == "custom"
        else [FixId.SPECTRAL_NORM, FixId.ORTHOGONAL_INIT]
    )
    return _finding(core, reason, f"{reason}.", fixes, Status.EXPLODING, "transient-growth")


def core_findings(cores: list[RecurrentCore], epsilon: float) -> list[Finding]:
    """Every finding on judged cores, in core order."""
    findings = []
    for core in cores:
        if core.status == Status.NONFINITE:
            findings.append(_nonfinite(core))
            continue
        if core.status == Status.VANISHING:
            findings.append(_vanishing(core, epsilon))
        elif core.status == Status.EXPLODING:
            findings.append(_exploding(core, epsilon))
        if is_non_normal(core):
            findings.append(_non_normal(core))
    return findings
