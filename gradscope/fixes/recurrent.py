"""Fixes for recurrent cores: code fitted to each core's module path, sizes and cell."""

from __future__ import annotations

from collections.abc import Callable

from gradscope.diagnosis.rules import plain_cell_call
from gradscope.fixes.code import module_expression
from gradscope.fixes.registry import Advice
from gradscope.report import FixId, RecurrentCore
from gradscope.theory import suggested_gate_bias


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
        horizon = max(core.distance for core in cores)
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


def clip_snippet(cores: list[RecurrentCore], epsilon: float) -> str:
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


def _argument_code(argument: str) -> str | None:
    """``args[1]`` or ``kwargs["h"]`` for ``argument 1`` or ``keyword h``; None otherwise."""
    kind, _, where = argument.partition(" ")
    if kind == "argument" and where.isdigit():
        return f"args[{where}]"
    if kind == "keyword" and where.isidentifier():
        return f"kwargs[{where!r}]"
    return None


#: A ResidualCell for a cell called as ``cell(x, state) -> state``.
PLAIN_RESIDUAL_CELL = [
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


def _residual_wrapper(argument: str, output: str) -> list[str]:
    """A ResidualCell for a cell called with its state in ``argument`` and returning its next
    state at ``output`` (the whole output, or one item of it), other arguments passed on."""
    whole = output == "output"
    new = "out" if whole else "out" + output.removeprefix("output")
    return [
        "class ResidualCell(nn.Module):",
        "    def __init__(self, cell):",
        "        super().__init__()",
        "        self.cell = cell",
        "",
        "    def forward(self, *args, **kwargs):",
        f"        state = {argument}  # the state the model passes",
        "        out = self.cell(*args, **kwargs)",
        f"        new = {new}  # the next state the cell returns",
        "        if torch.is_tensor(state):",
        "            added = state + new",
        "        elif isinstance(state, dict):",
        "            added = {key: state[key] + new[key] for key in state}",
        "        else:  # a tuple state such as (h, c): add each part",
        "            added = type(state)(s + u for s, u in zip(state, new))",
        *(
            ["        return added"]
            if whole
            else [
                "        # every output that is the next state becomes state + update",
                "        return type(out)(added if o is new else o for o in out)",
            ]
        ),
        "",
    ]


def _residual_state(cores: list[RecurrentCore], epsilon: float) -> str:
    """Wrap each custom cell so that it adds to its state: ``s' = s + f(x, s)``.

    The step Jacobian becomes ``I + df/ds``, which works for any cell without knowing its
    weights; a tuple or dict state is added part by part. A cell called otherwise than
    ``cell(x, state) -> state`` (extra arguments, a state elsewhere, an ``(output, state)``
    pair) gets a wrapper that passes everything on and adds where its state is.
    """
    lines = [
        "# s' = s + f(x, s): the step Jacobian becomes",
        "# I + df/ds, so the gradient need not pass",
        "# through the cell's contraction alone.",
    ]
    modules = _modules(cores)
    first = modules[0]
    argument = _argument_code(first.state.argument) if first.state else None
    single = first.state is not None and ", " not in first.state.output
    if not plain_cell_call(first) and argument is not None and single:
        lines += _residual_wrapper(argument, first.state.output)
    else:
        lines += PLAIN_RESIDUAL_CELL
    for core in modules:
        target = module_expression(core.name)
        lines.append(f"{target} = ResidualCell({target})")
    lines += [
        "# retrain: the cell now learns an update, not the",
        "# next state; scale the update down if the state grows",
    ]
    return "\n".join(lines)


#: Each fix as it applies to recurrent cores.
OVER_TIME = {
    FixId.CLIP_GRAD_NORM: Advice(
        "Clip the gradient norm in the training step",
        "Clip the global gradient norm after backward() and before the step.",
        clip_snippet,
    ),
    FixId.USE_LSTM: Advice(
        "Replace the vanilla RNN with an LSTM",
        "An LSTM's cell state carries gradients through its forget gate.",
        _replace_cell("LSTM"),
    ),
    FixId.USE_GRU: Advice(
        "Replace the vanilla RNN with a GRU",
        "A GRU's update gate lets the state pass through unchanged.",
        _replace_cell("GRU"),
    ),
    FixId.FORGET_GATE_BIAS: Advice(
        "Raise the LSTM forget-gate bias",
        "A larger forget bias keeps the cell state (and its gradient) longer.",
        _gate_bias("forget", "i, f, g, o"),
    ),
    FixId.UPDATE_GATE_BIAS: Advice(
        "Raise the GRU update-gate bias",
        "A larger update-gate bias makes the GRU keep its state longer.",
        _gate_bias("update", "r, z, n"),
    ),
    FixId.ORTHOGONAL_INIT: Advice(
        "Initialise recurrent weights orthogonally",
        "Orthogonal recurrent weights start with every singular value at 1.",
        _orthogonal,
    ),
    FixId.SPECTRAL_NORM: Advice(
        "Bound the recurrent gain with spectral normalisation",
        "Spectral normalisation bounds sigma_max of the recurrent weights by 1.",
        _spectral_norm,
    ),
    FixId.RESIDUAL_CONNECTIONS: Advice(
        "Add residual (skip) connections",
        "A skip adds the identity to each step's Jacobian (I + df/ds), so the gradient is not "
        "left to the contracting map alone.",
        _residual_state,
    ),
}
