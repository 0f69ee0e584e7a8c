"""The fixes gradscope knows (stable ids), each with a snippet fitted to the model at hand."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from gradscope.report import Finding, Fix, RecurrentCore

TITLES = {
    "clip-grad-norm": "Clip the gradient norm in the training step",
    "use-lstm": "Replace the vanilla RNN with an LSTM",
    "use-gru": "Replace the vanilla RNN with a GRU",
    "forget-gate-bias": "Raise the LSTM forget-gate bias",
    "update-gate-bias": "Raise the GRU update-gate bias",
    "orthogonal-init": "Initialise recurrent weights orthogonally",
    "spectral-norm": "Bound the recurrent gain with spectral normalisation",
    "residual-connections": "Add residual (skip) connections",
    "scale-residual-branch": "Scale down each residual branch",
    "normalization": "Add LayerNorm or BatchNorm",
    "change-activation": "Use a non-saturating activation",
    "init-gain": "Fix the initialisation scale",
}

CELL_CLASSES = {"rnn_tanh": "RNN", "rnn_relu": "RNN", "lstm": "LSTM", "gru": "GRU"}


def suggested_gate_bias(horizon: int, epsilon: float) -> float:
    """Total gate bias b whose gate sigmoid(b) alone keeps 1/eps of the gradient over L steps.

    Solves ``sigmoid(b) ** L = eps``; never below 1 (Jozefowicz et al. 2015).
    """
    keep = epsilon ** (1 / horizon)
    return max(1.0, math.log(keep / (1 - keep)))


def module_expression(name: str, root: str = "model") -> str:
    """Python for a module path: ``layers.0.rnn`` -> ``model.layers[0].rnn``."""
    if not name:
        return root
    parts = [f"[{p}]" if p.isdigit() else f".{p}" for p in name.split(".")]
    return root + "".join(parts)


def _modules(cores: list[RecurrentCore]) -> list[RecurrentCore]:
    """One core per module (the first), in report order."""
    seen: dict[str, RecurrentCore] = {}
    for core in cores:
        seen.setdefault(core.name, core)
    return list(seen.values())


def _constructor(core: RecurrentCore, cls: str) -> str:
    if core.is_cell:
        relu = ', nonlinearity="relu"' if cls == "RNN" and core.cell == "rnn_relu" else ""
        return f"nn.{cls}Cell({core.input_size}, {core.hidden_size}{relu})"
    args = [str(core.input_size), str(core.hidden_size)]
    if cls == "RNN" and core.cell == "rnn_relu":
        args.append('nonlinearity="relu"')
    if core.num_layers > 1:
        args.append(f"num_layers={core.num_layers}")
    if core.bidirectional:
        args.append("bidirectional=True")
    if core.batch_first:
        args.append("batch_first=True")
    return f"nn.{cls}({', '.join(args)})"


def _replace_cell(cls: str) -> Callable[[list[RecurrentCore], float], str]:
    def snippet(cores: list[RecurrentCore], epsilon: float) -> str:
        lines = ["# where the model is built:"]
        for core in _modules(cores):
            nested = core.name and not core.name.split(".")[0].isdigit()
            target = module_expression(core.name, "self" if nested else "model")
            lines.append(f"# was: {_constructor(core, 'RNN')}")
            lines.append(f"{target} = {_constructor(core, cls)}")
        if cls == "LSTM":
            lines.append("# an LSTM's state is a pair: unpack (h, c) where the RNN gave h")
        return "\n".join(lines)

    return snippet


def _gate_bias(gate: str, order: str) -> Callable[[list[RecurrentCore], float], str]:
    def snippet(cores: list[RecurrentCore], epsilon: float) -> str:
        horizon = max(core.horizon for core in cores)
        bias = suggested_gate_bias(horizon, epsilon)
        lines = [
            "# PyTorch adds bias_ih and bias_hh; the",
            f"# {gate} gate is chunk 1 of ({order}). A total",
            f"# bias of {bias:.1f} lets the gate alone keep",
            f"# 1/{1 / epsilon:g} of the gradient over {horizon} steps.",
        ]
        for core in _modules(cores):
            h = core.hidden_size
            lines += [
                f"module = {module_expression(core.name)}",
                "with torch.no_grad():",
                "    for name, bias in module.named_parameters():",
                '        if name.startswith("bias_ih"):',
                f"            bias[{h}:{2 * h}].fill_({bias:.1f})",
                '        elif name.startswith("bias_hh"):',
                f"            bias[{h}:{2 * h}].zero_()",
            ]
        return "\n".join(lines)

    return snippet


def _clip(cores: list[RecurrentCore], epsilon: float) -> str:
    return "\n".join(
        [
            "optimizer.zero_grad()",
            "loss.backward()",
            "torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)",
            "optimizer.step()",
        ]
    )


def _orthogonal(cores: list[RecurrentCore], epsilon: float) -> str:
    lines = []
    for core in _modules(cores):
        lines += [
            f"module = {module_expression(core.name)}",
            "with torch.no_grad():",
            "    for name, weight in module.named_parameters():",
            '        if name.startswith("weight_hh"):',
            "            torch.nn.init.orthogonal_(weight)",
        ]
    return "\n".join(lines)


def _spectral_norm(cores: list[RecurrentCore], epsilon: float) -> str:
    lines = ["from torch.nn.utils.parametrizations import spectral_norm", ""]
    for core in _modules(cores):
        lines.append(f"module = {module_expression(core.name)}")
        if core.is_cell:
            lines.append('spectral_norm(module, name="weight_hh")')
            continue
        for layer in range(core.num_layers):
            for suffix in ("", "_reverse") if core.bidirectional else ("",):
                lines.append(f'spectral_norm(module, name="weight_hh_l{layer}{suffix}")')
    return "\n".join(lines)


def _residual_state(cores: list[RecurrentCore], epsilon: float) -> str:
    """Wrap each custom cell so that it adds to its state: ``s' = s + f(x, s)``.

    The step Jacobian becomes ``I + df/ds``, which works for any cell without knowing its
    weights; a tuple state such as ``(h, c)`` is added part by part.
    """
    lines = [
        "# s' = s + f(x, s): the step Jacobian becomes",
        "# I + df/ds, so the gradient need not pass",
        "# through the cell's contraction alone.",
        "class ResidualCell(nn.Module):",
        "    def __init__(self, cell):",
        "        super().__init__()",
        "        self.cell = cell",
        "",
        "    def forward(self, x, state):",
        "        update = self.cell(x, state)",
        "        if torch.is_tensor(state):",
        "            return state + update",
        "        # a tuple state such as (h, c): add each part",
        "        return type(state)(s + u for s, u in zip(state, update))",
        "",
    ]
    for core in _modules(cores):
        target = module_expression(core.name)
        lines.append(f"{target} = ResidualCell({target})")
    lines += [
        "# retrain: the cell now learns an update, not the",
        "# next state; scale the update down if the state grows",
    ]
    return "\n".join(lines)


SNIPPETS: dict[str, Callable[[list[RecurrentCore], float], str]] = {
    "clip-grad-norm": _clip,
    "use-lstm": _replace_cell("LSTM"),
    "use-gru": _replace_cell("GRU"),
    "forget-gate-bias": _gate_bias("forget", "i, f, g, o"),
    "update-gate-bias": _gate_bias("update", "r, z, n"),
    "orthogonal-init": _orthogonal,
    "spectral-norm": _spectral_norm,
    "residual-connections": _residual_state,
}

WHAT = {
    "clip-grad-norm": "Clip the global gradient norm after backward() and before the step.",
    "use-lstm": "An LSTM's cell state carries gradients through its forget gate.",
    "use-gru": "A GRU's update gate lets the state pass through unchanged.",
    "forget-gate-bias": "A larger forget bias keeps the cell state (and its gradient) longer.",
    "update-gate-bias": "A larger update-gate bias makes the GRU keep its state longer.",
    "orthogonal-init": "Orthogonal recurrent weights start with every singular value at 1.",
    "spectral-norm": "Spectral normalisation bounds sigma_max of the recurrent weights by 1.",
    "residual-connections": "A skip adds the identity to each step's Jacobian (I + df/ds), so "
    "the gradient is not left to the contracting map alone.",
}


def _why(fix_id: str, findings: list[Finding]) -> str:
    reasons = [
        re.sub(r"\s*\(lambda_1.*", "", f.message).rstrip(".;")
        for f in findings
        if fix_id in f.fixes
    ]
    return "; ".join(dict.fromkeys(reasons))


def build_fixes(findings: list[Finding], cores: list[RecurrentCore], epsilon: float) -> list[Fix]:
    """One fix per id the findings call for, in order of first mention."""
    fixes = []
    ids = dict.fromkeys(fix_id for finding in findings for fix_id in finding.fixes)
    by_where = {(c.name, c.layer, c.direction): c for c in cores}
    for fix_id in ids:
        involved = [
            by_where[(f.where["module"], f.where["layer"], f.where["direction"])]
            for f in findings
            if fix_id in f.fixes
        ]
        fixes.append(
            Fix(
                id=fix_id,
                title=TITLES[fix_id],
                detail=f"Why: {_why(fix_id, findings)}. {WHAT[fix_id]}",
                snippet=SNIPPETS[fix_id](involved, epsilon),
            )
        )
    return fixes
