"""The fixes gradscope knows (stable ids), each with a snippet fitted to the model at hand."""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence

from gradscope.report import DepthLayer, DepthStack, Finding, Fix, RecurrentCore

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

#: Titles where a deep stack calls for the fix (the recurrent ones name W_hh).
DEPTH_TITLES = {"orthogonal-init": "Initialise weights orthogonally"}

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


# --- deep stacks: what the numbers say about the blocks -------------------------------------

#: Saturating activations by lowercase name, with their ``nn`` class.
SATURATING = {
    "sigmoid": "Sigmoid",
    "tanh": "Tanh",
    "hardsigmoid": "Hardsigmoid",
    "hardtanh": "Hardtanh",
    "softsign": "Softsign",
}
#: The largest slope of an activation where it caps chi without any saturation.
MAX_SLOPE = {"sigmoid": 0.25, "hardsigmoid": 1 / 6}
#: Activations whose He (kaiming) gain is ReLU's; orthogonal init suits them as a linear map.
RELU_LIKE = ("relu", "leakyrelu", "prelu", "rrelu", "relu6")
#: Names that mean "no activation".
LINEAR = ("linear", "identity", "none", "")
#: Share of a block's units saturated (or dead) above which the block is called saturated.
ACTIVITY_LIMIT = 0.1
#: A per-block gain chi outside [1/CHI_TOLERANCE, CHI_TOLERANCE] is far from 1.
CHI_TOLERANCE = 1.25
#: Singular-value spread (largest over RMS) worth naming: far from dynamical isometry.
SPREAD_LIMIT = 10.0
#: Largest line in a snippet.
SNIPPET_WIDTH = 76


def activation_key(name: str | None) -> str | None:
    """``"LeakyReLU"`` -> ``"leakyrelu"``; ``None`` for no activation."""
    if name is None:
        return None
    key = name.lower().replace("_", "")
    return None if key in LINEAR else key


def saturates(name: str | None) -> bool:
    """Whether an activation (by measured name) saturates: sigmoid, tanh and their kin."""
    return activation_key(name) in SATURATING


def dominant_activation(layers: Sequence[DepthLayer]) -> str | None:
    """The activation most blocks use, as measured (``"Sigmoid"``); ``None`` for none."""
    names: dict[str | None, str] = {}
    counts: Counter[str | None] = Counter()
    for layer in layers:
        key = activation_key(layer.activation)
        if key is not None:
            names.setdefault(key, layer.activation or "")
            counts[key] += 1
    if not counts:
        return None
    return names[counts.most_common(1)[0][0]]


def plain_chi(layers: Sequence[DepthLayer]) -> float:
    """Geometric mean of chi over the blocks without a skip (NaN when none is measured)."""
    values = [layer.chi for layer in layers if not layer.residual and math.isfinite(layer.chi)]
    if not values:
        return math.nan
    if min(values) <= 0:
        return 0.0
    return math.exp(sum(math.log(value) for value in values) / len(values))


def chi_far_from_one(chi: float) -> bool:
    """Whether a per-block gain is far enough from 1 to be the init scale's doing."""
    if math.isnan(chi):
        return False
    return chi <= 0 or abs(math.log(chi)) > math.log(CHI_TOLERANCE)


def skip_candidates(layers: Sequence[DepthLayer]) -> list[DepthLayer]:
    """Blocks without a skip that keep their shape, so ``x + f(x)`` is defined."""
    return [layer for layer in layers if not layer.residual and _keeps_shape(layer)]


def _keeps_shape(layer: DepthLayer) -> bool:
    if layer.same_shape is not None:
        return layer.same_shape
    return layer.input_size == layer.output_size


def wants_skips(stack: DepthStack, layers: Sequence[DepthLayer]) -> bool:
    """At least half the blocks (and two) can take a skip: enough to carry the gradient."""
    return len(skip_candidates(layers)) >= max(2, stack.blocks / 2)


def saturated_blocks(layers: Sequence[DepthLayer]) -> list[DepthLayer]:
    """Blocks with more than ACTIVITY_LIMIT of their units saturated."""
    return [layer for layer in layers if (layer.saturated or 0.0) > ACTIVITY_LIMIT]


def dead_blocks(layers: Sequence[DepthLayer]) -> list[DepthLayer]:
    """Blocks with more than ACTIVITY_LIMIT of their ReLU units dead on the probe."""
    return [layer for layer in layers if (layer.dead or 0.0) > ACTIVITY_LIMIT]


def inactive_blocks(layers: Sequence[DepthLayer]) -> list[DepthLayer]:
    """Blocks saturated or dead beyond ACTIVITY_LIMIT: the units a norm would bring back."""
    return [
        layer for layer in layers if max(layer.saturated or 0.0, layer.dead or 0.0) > ACTIVITY_LIMIT
    ]


def residual_layers(layers: Sequence[DepthLayer]) -> list[DepthLayer]:
    """The blocks with a skip (Jacobian ``I + B``)."""
    return [layer for layer in layers if layer.residual]


def branch_gain(layers: Sequence[DepthLayer]) -> float:
    """Mean branch gain chi_B over the residual blocks (NaN when none is measured)."""
    values = [
        layer.branch_chi
        for layer in residual_layers(layers)
        if layer.branch_chi is not None and math.isfinite(layer.branch_chi)
    ]
    return sum(values) / len(values) if values else math.nan


def he_nonlinearity(stack: DepthStack, layers: Sequence[DepthLayer]) -> str:
    """The ``nonlinearity`` for kaiming init: ReLU's when a vanishing saturating stack switches."""
    activation = dominant_activation(layers)
    key = activation_key(activation)
    if key is None:  # none seen: a functional F.relu between blocks is the usual reason
        return "relu" if unseen_clause(layers) else "linear"
    if key in SATURATING:
        if stack.status == "vanishing":
            return "relu"
        return "sigmoid" if "sigmoid" in key else "tanh"
    return "leaky_relu" if key in ("leakyrelu", "prelu", "rrelu") else "relu"


def _init_name(nonlinearity: str) -> str:
    return {"relu": "He init", "leaky_relu": "He init", "linear": "LeCun init"}.get(
        nonlinearity, f"kaiming init with the {nonlinearity} gain"
    )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def activation_clause(layers: Sequence[DepthLayer]) -> str:
    """``50 of 50 blocks use Sigmoid, whose slope is at most 0.25``."""
    activation = dominant_activation(layers)
    key = activation_key(activation)
    count = sum(activation_key(layer.activation) == key for layer in layers)
    slope = MAX_SLOPE.get(key or "")
    why = (
        f"whose slope is at most {slope:.3g}"
        if slope is not None
        else "whose slope falls towards 0 away from the origin"
    )
    return f"{count} of {len(layers)} blocks use {activation}, {why}"


def chi_clause(stack: DepthStack, layers: Sequence[DepthLayer]) -> str:
    """``per-block gain chi = 0.667 (geometric mean) with ReLU units: ...``."""
    chi = plain_chi(layers)
    text = f"per-block gain chi = {chi:.3g} (geometric mean)"
    activation = dominant_activation(layers)
    if saturates(activation):
        return text
    units = f"with {activation} units" if activation else "with no activation"
    init = _init_name(he_nonlinearity(stack, layers))
    return f"{text} {units}: the init scale sets it, and {init} gives 1"


def unseen_blocks(layers: Sequence[DepthLayer]) -> list[DepthLayer]:
    """Blocks whose output is not what the next block reads: unseen work sits between."""
    return [layer for layer in layers if not layer.chained]


def unseen_clause(layers: Sequence[DepthLayer]) -> str | None:
    """``12 of 30 blocks are followed by work the depth view does not see (...)``."""
    unseen = unseen_blocks(layers)
    if len(unseen) < max(2, len(layers) / 2):
        return None
    return (
        f"{len(unseen)} of {len(layers)} blocks are followed by work the depth view does not "
        "see (a functional activation such as F.relu, or a skip in forward()): their chi "
        "covers the modules only, their gain all of it"
    )


def _activity_clause(
    layers: Sequence[DepthLayer], flagged: list[DepthLayer], field: str, what: str, default: str
) -> str | None:
    """``N of M blocks <what> their <activation> units (mean P%)``; None when none is flagged."""
    if not flagged:
        return None
    measured = [getattr(layer, field) for layer in layers if getattr(layer, field) is not None]
    names = dict.fromkeys(layer.activation for layer in flagged if layer.activation)
    units = "/".join(name for name in names if name) or default
    return (
        f"{len(flagged)} of {len(layers)} blocks {what} {units} units (mean {_mean(measured):.0%})"
    )


def saturation_clause(layers: Sequence[DepthLayer]) -> str | None:
    """``48 of 50 blocks saturate their Sigmoid units (mean 31%)``; None when few do."""
    return _activity_clause(
        layers, saturated_blocks(layers), "saturated", "saturate their", "saturating"
    )


def dead_clause(layers: Sequence[DepthLayer]) -> str | None:
    """``12 of 50 blocks have dead ReLU units (mean 40%)``; None when few do."""
    return _activity_clause(layers, dead_blocks(layers), "dead", "have dead", "ReLU")


def spread_clause(stack: DepthStack) -> str | None:
    """The end-to-end Jacobian's spread when it is far from isometry."""
    spread = stack.spread
    if spread is None or not math.isfinite(spread) or spread <= SPREAD_LIMIT:
        return None
    return f"the input-output Jacobian's singular values spread x{spread:.3g} (largest over RMS)"


def residual_clause(layers: Sequence[DepthLayer]) -> str:
    """``50 residual blocks with branch gain chi_B = 1 (mean) each grow it by ...``."""
    residual = residual_layers(layers)
    gain = branch_gain(layers)
    growth = math.sqrt(1 + gain) if gain >= 0 else math.nan
    return (
        f"{len(residual)} residual blocks with branch gain chi_B = {gain:.3g} (mean) each grow it "
        f"by sqrt(1 + chi_B) = {growth:.3g}: their branches are not scaled down with depth"
    )


def skip_clause(stack: DepthStack, layers: Sequence[DepthLayer]) -> str:
    """``48 of 50 blocks keep their shape (512 -> 512) and have no skip``."""
    candidates = skip_candidates(layers)
    sizes = dict.fromkeys(layer.output_size for layer in candidates)
    shown = ", ".join(f"{size} -> {size}" for size in list(sizes)[:3])
    more = ", ..." if len(sizes) > 3 else ""
    return (
        f"{len(candidates)} of {stack.blocks} blocks keep their shape ({shown}{more}) "
        "and have no skip"
    )


# --- deep stacks: snippets ------------------------------------------------------------------


def _literal(name: str, items: list[str], brackets: str = "[]") -> list[str]:
    """``name = [a, b, ...]`` in lines of at most SNIPPET_WIDTH characters."""
    opening, closing = brackets
    head = f"{name} = {opening}"
    line = head + ", ".join(items) + closing
    if len(line) <= SNIPPET_WIDTH:
        return [line]
    lines, current = [head], "   "
    for item in items:
        if len(current) + len(item) + 2 > SNIPPET_WIDTH and current.strip():
            lines.append(current)
            current = "   "
        current += f" {item},"
    return [*lines, current, closing]


def _indexed(paths: list[str]) -> tuple[str, list[int]] | None:
    """``["blocks.0.fc2", "blocks.1.fc2"]`` -> ``("blocks.{i}.fc2", [0, 1])``.

    None unless the paths differ in one part only, and that part is a child index.
    """
    parts = [path.split(".") for path in paths]
    if len({len(split) for split in parts}) != 1:
        return None
    varying = [k for k in range(len(parts[0])) if len({split[k] for split in parts}) > 1]
    if len(varying) != 1 or not all(split[varying[0]].isdigit() for split in parts):
        return None
    template = list(parts[0])
    template[varying[0]] = "{i}"
    return ".".join(template), [int(split[varying[0]]) for split in parts]


def _progression(numbers: list[int]) -> str | None:
    """``range(2, 100, 2)`` for an arithmetic progression of three or more numbers."""
    if len(numbers) < 3:
        return None
    step = numbers[1] - numbers[0]
    if step <= 0 or any(b - a != step for a, b in itertools.pairwise(numbers)):
        return None
    stop = numbers[-1] + step
    return f"range({numbers[0]}, {stop})" if step == 1 else f"range({numbers[0]}, {stop}, {step})"


def _paths(paths: list[str]) -> list[str]:
    """``paths = [...]``: module paths, as a comprehension when they index one container."""
    indexed = _indexed(paths) if paths else None
    span = _progression(indexed[1]) if indexed else None
    if indexed and span:
        template = indexed[0]
        item = "str(i)" if template == "{i}" else f'f"{template}"'
        return [f"paths = [{item} for i in {span}]"]
    return _literal("paths", [f'"{path}"' for path in paths])


def _block_paths(layers: Sequence[DepthLayer]) -> list[str]:
    """Every module path of the blocks, once, in order."""
    return list(dict.fromkeys(path for layer in layers for path in layer.modules or [layer.name]))


#: The parametrised layers snippets re-initialise.
LAYER_TYPES = "LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)"


def _each_weight(call: str) -> list[str]:
    """Loop over the Linear/Conv modules under ``paths`` and apply ``call`` to the weight."""
    return [
        LAYER_TYPES,
        "for path in paths:",
        "    for module in model.get_submodule(path).modules():",
        "        if isinstance(module, LAYERS):",
        f"            {call}",
        "            if module.bias is not None:",
        "                nn.init.zeros_(module.bias)",
    ]


def _kaiming(nonlinearity: str) -> str:
    return f'nn.init.kaiming_normal_(module.weight, nonlinearity="{nonlinearity}")'


RESIDUAL_CLASS = [
    "class Residual(nn.Module):",
    "    def __init__(self, *layers):",
    "        super().__init__()",
    "        self.branch = nn.Sequential(*layers)",
    "",
    "    def forward(self, x):",
    "        return x + self.branch(x)",
    "",
]


def _consecutive(layer: DepthLayer) -> bool:
    indices = sorted(layer.indices)
    return bool(indices) and indices == list(range(indices[0], indices[0] + len(indices)))


def _rebuild_container(parent: str, blocks: list[DepthLayer]) -> list[str]:
    """Rebuild a Sequential (or ModuleList) with each block's children inside a ``Residual``."""
    spans = {min(layer.indices): len(layer.indices) for layer in blocks}
    starts = sorted(spans)
    sizes = set(spans.values())
    span = _progression(starts) if len(sizes) == 1 else None
    if span is not None:
        wrap = [f"wrap = {{i: {sizes.pop()} for i in {span}}}"]
    else:
        wrap = _literal("wrap", [f"{start}: {spans[start]}" for start in starts], "{}")
    target = module_expression(parent)
    if parent:
        rebuild = [
            "if isinstance(old, nn.ModuleList):",
            f"    {target} = nn.ModuleList(new)",
            "else:",
            f"    {target} = nn.Sequential(*new)",
        ]
    else:
        rebuild = [f"{target} = nn.Sequential(*new)"]
    return [
        "# wrap: each block's first child -> its number of children.",
        "# The children are renumbered: re-save checkpoints after.",
        f"old = {target}",
        *wrap,
        "new, i = [], 0",
        "while i < len(old):",
        "    size = wrap.get(i, 1)",
        "    new.append(Residual(*old[i:i + size]) if i in wrap else old[i])",
        "    i += size",
        *rebuild,
    ]


def _skip_blocks(stack: DepthStack, layers: Sequence[DepthLayer]) -> str:
    """Wrap each shape-keeping block in ``x + f(x)``.

    A block of several children of one container (``Linear`` + ``Sigmoid``) is regrouped by
    rebuilding the container; a block that is one module is wrapped in place by its path; a
    block of several modules elsewhere needs its skip written in ``forward()``.
    """
    grouped: dict[str, list[DepthLayer]] = {}
    singles, by_hand = [], []
    candidates = skip_candidates(layers)
    for layer in candidates:
        if len(layer.modules) > 1 and layer.parent is not None and _consecutive(layer):
            grouped.setdefault(layer.parent, []).append(layer)
    for layer in candidates:
        if len(layer.modules) > 1:
            if layer.parent not in grouped or not _consecutive(layer):
                by_hand.append(layer)
        elif layer.parent in grouped and layer.indices:  # renumbered with its container
            grouped[layer.parent].append(layer)
        else:
            singles.append(layer.modules[0])
    lines = [
        "# x + f(x): each block's Jacobian becomes I + df/dx, so",
        "# the gradient reaches the input along the identity.",
        *RESIDUAL_CLASS,
    ]
    for parent, blocks in grouped.items():
        lines += _rebuild_container(parent, blocks)
    if singles:
        lines += [
            *_paths(singles),
            "for path in paths:",
            "    model.set_submodule(path, Residual(model.get_submodule(path)))",
        ]
    for layer in by_hand:
        lines += [
            f"# {', '.join(layer.modules)}: add the skip",
            "# in forward(): x = x + block(x)",
        ]
    return "\n".join(lines)


def _change_activation(stack: DepthStack, layers: Sequence[DepthLayer]) -> str:
    """Swap each saturating activation for ReLU and re-initialise with He init."""
    blocks = [layer for layer in layers if saturates(layer.activation)]
    head = layers[-1] if layers else None
    lines = [
        "# ReLU's slope is 1 where a unit is active; He init",
        "# then starts every block with chi = 1 (GELU also works).",
    ]
    if head is not None and head in blocks and head.input_size != head.output_size:
        blocks.remove(head)
        lines.append(f"# {head.name} keeps its {head.activation}: it shapes the output")
    keys = dict.fromkeys(activation_key(layer.activation) or "" for layer in blocks)
    classes = [f"nn.{SATURATING[key]}" for key in keys if key in SATURATING]
    classes = classes or ["nn.Sigmoid", "nn.Tanh"]
    lines += [
        f"SATURATING = ({', '.join(classes)},)",
        LAYER_TYPES,
        *_paths(_block_paths(blocks)),
        "for path in paths:",
        "    block = model.get_submodule(path)",
        "    for name, module in list(block.named_modules()):",
        '        full = f"{path}.{name}" if name else path',
        "        if isinstance(module, SATURATING):",
        "            model.set_submodule(full, nn.ReLU())",
        "        elif isinstance(module, LAYERS):",
        f"            {_kaiming('relu')}",
        "            if module.bias is not None:",
        "                nn.init.zeros_(module.bias)",
    ]
    return "\n".join(lines)


def _plain_paths(layers: Sequence[DepthLayer]) -> list[str]:
    return _paths(_block_paths([layer for layer in layers if not layer.residual]))


def _init_gain(stack: DepthStack, layers: Sequence[DepthLayer]) -> str:
    """kaiming_normal_ with the gain of the activation the blocks have (or switch to)."""
    nonlinearity = he_nonlinearity(stack, layers)
    chi = plain_chi(layers)
    return "\n".join(
        [
            f"# {_init_name(nonlinearity)}: weight variance gain^2 / fan_in,",
            f"# so each block starts with chi near 1 (measured: {chi:.3g}).",
            *_plain_paths(layers),
            *_each_weight(_kaiming(nonlinearity)),
        ]
    )


def _orthogonal_stack(stack: DepthStack, layers: Sequence[DepthLayer]) -> str:
    """Orthogonal weights with the activation's gain: every singular value starts equal."""
    nonlinearity = he_nonlinearity(stack, layers)
    return "\n".join(
        [
            "# every singular value of each weight starts at the",
            f"# {nonlinearity} gain, so the stack is closer to isometry.",
            f'gain = nn.init.calculate_gain("{nonlinearity}")',
            *_plain_paths(layers),
            *_each_weight("nn.init.orthogonal_(module.weight, gain=gain)"),
        ]
    )


def _normalization(stack: DepthStack, layers: Sequence[DepthLayer]) -> str:
    """A norm right after each Linear/Conv of the saturated (or dead) blocks."""
    blocks = inactive_blocks(layers)
    where = ["off the flat tails"] if saturated_blocks(layers) else []
    where += ["out of the dead zone"] if dead_blocks(layers) else []
    return "\n".join(
        [
            "# LayerNorm after each Linear (BatchNorm after a Conv),",
            "# just before the activation: pre-activations stay",
            f"# centred, {' and '.join(where)}.",
            "NORMS = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d,",
            "         nn.Conv3d: nn.BatchNorm3d}",
            *_paths(_block_paths(blocks)),
            "for path in paths:",
            "    block = model.get_submodule(path)",
            "    for name, module in list(block.named_modules()):",
            '        full = f"{path}.{name}" if name else path',
            "        if isinstance(module, nn.Linear):",
            "            norm = nn.LayerNorm(module.out_features)",
            "        elif type(module) in NORMS:",
            "            norm = NORMS[type(module)](module.out_channels)",
            "        else:",
            "            continue",
            "        model.set_submodule(full, nn.Sequential(module, norm))",
        ]
    )


def _scale_branches(stack: DepthStack, layers: Sequence[DepthLayer]) -> str:
    """Scale each branch's last layer by 1/sqrt(depth x chi_B), or zero it (SkipInit)."""
    residual = residual_layers(layers)
    depth = len(residual) or stack.residual_blocks
    gain = branch_gain(layers)
    if math.isnan(gain) or gain <= 0 or abs(gain - 1) < 0.1:
        scale, why = f"1 / {depth} ** 0.5", f"1/sqrt({depth})"
    else:
        scale, why = f"1 / ({depth} * {gain:.3g}) ** 0.5", f"1/sqrt({depth} x chi_B {gain:.3g})"
    lines = [
        f"# {depth} residual blocks: a branch scaled by {why} makes",
        "# the product of sqrt(1 + chi_B) over depth about e^0.5.",
        "# zero_init = True starts each block as the identity",
        "# (SkipInit / Fixup) and lets training grow the branch.",
        f"scale = {scale}",
        "zero_init = False",
    ]
    known = [layer.branch_last for layer in residual if layer.branch_last]
    if known:
        lines += [
            *_paths(known),
            "with torch.no_grad():",
            "    for path in paths:",
            "        layer = model.get_submodule(path)",
            '        for param in (layer.weight, getattr(layer, "bias", None)):',
            "            if param is None:",
            "                continue",
            "            if zero_init:",
            "                param.zero_()",
            "            else:",
            "                param.mul_(scale)",
        ]
    unknown = [layer.name for layer in residual if not layer.branch_last]
    if unknown:
        more = ", ..." if len(unknown) > 3 else ""
        lines += [
            f"# {', '.join(unknown[:3])}{more}: no last layer found;",
            "# in their forward(), return x + scale * branch(x)",
        ]
    return "\n".join(lines)


DEPTH_SNIPPETS: dict[str, Callable[[DepthStack, Sequence[DepthLayer]], str]] = {
    "clip-grad-norm": lambda stack, layers: _clip([], 0.0),
    "residual-connections": _skip_blocks,
    "change-activation": _change_activation,
    "init-gain": _init_gain,
    "orthogonal-init": _orthogonal_stack,
    "normalization": _normalization,
    "scale-residual-branch": _scale_branches,
}

DEPTH_WHAT = {
    "clip-grad-norm": WHAT["clip-grad-norm"],
    "residual-connections": "A skip around each block makes its Jacobian I + df/dx, so the "
    "gradient is not left to the product of the blocks' gains.",
    "change-activation": "ReLU (or GELU) has slope 1 where active; with He init each block "
    "starts with chi near 1.",
    "init-gain": "Initialising each weight with the activation's gain (He init for ReLU) "
    "starts each block with chi near 1.",
    "orthogonal-init": "Orthogonal weights start with every singular value equal, closer to "
    "dynamical isometry than Gaussian ones.",
    "normalization": "A norm before each activation keeps pre-activations centred and scaled, "
    "where the activation's slope is large.",
    "scale-residual-branch": "A branch scaled by 1/sqrt(depth) (or zero at the start) keeps "
    "the product of sqrt(1 + chi_B) over all blocks bounded.",
}


def _depth_evidence(fix_id: str, stack: DepthStack, layers: Sequence[DepthLayer]) -> str | None:
    """The measurement behind a depth fix, beyond the rate."""
    if fix_id == "residual-connections":
        return skip_clause(stack, layers)
    if fix_id == "change-activation":
        return f"{activation_clause(layers)}: {chi_clause(stack, layers)}"
    switching = saturates(dominant_activation(layers)) and stack.status == "vanishing"
    if fix_id == "init-gain" and switching:
        return f"{chi_clause(stack, layers)}; with ReLU in their place, He init gives 1"
    if fix_id in ("init-gain", "orthogonal-init"):
        clauses = [chi_clause(stack, layers)]
        if fix_id == "orthogonal-init":
            clauses.append(spread_clause(stack))
        return "; ".join(clause for clause in clauses if clause)
    if fix_id == "normalization":
        clauses = [saturation_clause(layers), dead_clause(layers)]
        return "; ".join(clause for clause in clauses if clause)
    if fix_id == "scale-residual-branch":
        return residual_clause(layers)
    return None


def _why(fix_id: str, findings: list[Finding]) -> str:
    reasons = [
        re.sub(r"\s*\(lambda_1.*", "", f.message).rstrip(".;")
        for f in findings
        if fix_id in f.fixes
    ]
    return "; ".join(dict.fromkeys(reasons))


def _depth_why(
    fix_id: str, findings: list[Finding], stack: DepthStack, layers: Sequence[DepthLayer]
) -> str:
    """The stack finding's rate, then the measurement that calls for this fix."""
    rates = [f.message.split(";")[0].rstrip(".") for f in findings if fix_id in f.fixes]
    evidence = _depth_evidence(fix_id, stack, layers)
    return "; ".join(dict.fromkeys([*rates, *([evidence] if evidence else [])]))


def build_fixes(
    findings: list[Finding],
    cores: list[RecurrentCore],
    epsilon: float,
    depth: DepthStack | None = None,
    layers: Sequence[DepthLayer] = (),
) -> list[Fix]:
    """One fix per id the findings call for, in order of first mention.

    A finding about a core (``where["module"]``) gets the recurrent snippet, one about the deep
    stack (``where["stack"]``) the snippet for its blocks; a fix both call for gets both.
    """
    fixes = []
    ids = dict.fromkeys(fix_id for finding in findings for fix_id in finding.fixes)
    by_where = {(c.name, c.layer, c.direction): c for c in cores}
    for fix_id in ids:
        calling = [f for f in findings if fix_id in f.fixes]
        on_cores = [f for f in calling if "module" in f.where]
        on_stack = [f for f in calling if "stack" in f.where] if depth is not None else []
        whys, whats, snippets = [], [], []
        if on_cores:
            involved = [
                by_where[(f.where["module"], f.where["layer"], f.where["direction"])]
                for f in on_cores
            ]
            whys.append(_why(fix_id, on_cores))
            whats.append(WHAT[fix_id])
            snippets.append(SNIPPETS[fix_id](involved, epsilon))
        if on_stack and depth is not None:
            whys.append(_depth_why(fix_id, on_stack, depth, layers))
            whats.append(DEPTH_WHAT[fix_id])
            snippets.append(DEPTH_SNIPPETS[fix_id](depth, layers))
        title = DEPTH_TITLES.get(fix_id, TITLES[fix_id]) if on_stack else TITLES[fix_id]
        fixes.append(
            Fix(
                id=fix_id,
                title=title,
                detail=f"Why: {'; '.join(whys)}. {' '.join(dict.fromkeys(whats))}",
                snippet="\n\n".join(dict.fromkeys(snippets)),
            )
        )
    return fixes
