"""Recurrent architecture from a state dict alone: PyTorch's parameter names and shapes tell it.

``<prefix>weight_hh_l{k}[_reverse]`` of shape (G*H, H) is layer k of an ``nn.RNN``/``LSTM``/
``GRU`` with G = 1, 4, 3 gates; ``weight_hr_l{k}`` (P, H) is an LSTM projection; the same names
without the ``_l{k}`` suffix belong to a cell. Each group is rebuilt as PyTorch's own module with
the saved weights, so the cores gradscope analyses are exactly the saved ones. The weights cannot
tell a tanh RNN from a ReLU one, nor the input layout: those are assumptions, stated.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

PARAMETER = re.compile(
    r"^(?P<prefix>(?:.*\.)?)(?P<param>weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)"
    r"(?:_l(?P<layer>\d+)(?P<reverse>_reverse)?)?$"
)
#: Weight norm, old style (``weight_hh_l0_g``, ``_v``) and as a parametrization
#: (``parametrizations.weight_hh_l0.original0`` = g, ``original1`` = v).
WEIGHT_NORM_OLD = re.compile(r"^(?P<base>.*)_(?P<part>[gv])$")
WEIGHT_NORM_NEW = re.compile(
    r"^(?P<head>(?:.*\.)?)parametrizations\.(?P<name>\w+)\.original(?P<part>[01])$"
)
KINDS = {4: "lstm", 3: "gru", 1: "rnn"}
MODULES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
CELLS = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn": nn.RNNCell}


#: What the weights cannot tell, and what is assumed instead.
ASSUMPTIONS = {
    "nonlinearity": "tanh or ReLU cannot be read from the weights; assumed tanh, PyTorch's "
    "default (--nonlinearity relu to change)",
    "cell": "weights named as PyTorch's recurrent cells name theirs; rebuilt as PyTorch's cell "
    "(a custom cell that reuses the names computes something else: pass --model)",
    "layout": "the input layout cannot be read from the weights; assumed time-major (steps, "
    "batch, features), PyTorch's default (--batch-first to change)",
}


@dataclass
class InferredPart:
    """One recurrent module or cell rebuilt from its weights, at its path in the model."""

    name: str
    module: nn.Module
    assumptions: list[str] = field(default_factory=list)  # keys of ASSUMPTIONS

    @property
    def is_cell(self) -> bool:
        """True for a single cell (the model loops over time itself)."""
        return isinstance(self.module, tuple(CELLS.values()))


@dataclass
class Inference:
    """Every recurrent part found in a state dict, and what was left out and why."""

    parts: list[InferredPart]
    not_analysed: dict[str, int]  # what was left out and why -> its number of elements
    recomposed: list[str] = field(default_factory=list)

    def assumptions(self) -> list[str]:
        """One line per assumption, naming the parts it was made for."""
        lines = []
        for key, text in ASSUMPTIONS.items():
            names = [p.name or "(model)" for p in self.parts if key in p.assumptions]
            if names:
                lines.append(f"{', '.join(names)}: {text}")
        return lines


def _weight_norm(g: Tensor, v: Tensor) -> Tensor:
    """``g * v / ||v||``, the norm over every axis where ``g`` has size 1."""
    axes = tuple(d for d in range(v.dim()) if g.shape[d] == 1)
    return v * (g / v.norm(dim=axes, keepdim=True))


def recompose_weight_norm(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Recurrent weights saved under weight norm, as the plain weights they stand for."""
    pairs: dict[str, dict[str, str]] = defaultdict(dict)
    for key in state_dict:
        old, new = WEIGHT_NORM_OLD.match(key), WEIGHT_NORM_NEW.match(key)
        if new and PARAMETER.match(new["head"] + new["name"]):
            pairs[new["head"] + new["name"]]["gv"[int(new["part"])]] = key
        elif old and PARAMETER.match(old["base"]):
            pairs[old["base"]][old["part"]] = key
    result = dict(state_dict)
    recomposed = []
    for name, parts in pairs.items():
        if set(parts) != {"g", "v"} or name in state_dict:
            continue
        g, v = state_dict[parts["g"]], state_dict[parts["v"]]
        if g.dim() != v.dim() or any(
            a not in (1, b) for a, b in zip(g.shape, v.shape, strict=True)
        ):
            continue
        result[name] = _weight_norm(g, v)
        del result[parts["g"]], result[parts["v"]]
        recomposed.append(name)
    return result, recomposed


def _owner(prefix: str) -> str:
    return prefix[:-1] if prefix.endswith(".") else prefix


def _build(
    name: str,
    params: dict[str, Tensor],
    nonlinearity: str | None,
    batch_first: bool | None,
    hint: Mapping,
) -> InferredPart | str:
    """The module that ``params`` (names without the group prefix) belong to, or why not.

    ``hint`` holds what a program recorded about the module (``nonlinearity``,
    ``batch_first``); without it, the flags or PyTorch's defaults are assumed.
    """
    cell = "weight_hh" in params
    suffix = "" if cell else "_l0"
    hh, ih = params.get(f"weight_hh{suffix}"), params.get(f"weight_ih{suffix}")
    if hh is None or ih is None or hh.dim() != 2 or ih.dim() != 2:
        return "weight_ih and weight_hh of the first layer are not both there as matrices"
    hr = params.get(f"weight_hr{suffix}")
    hidden = hr.shape[1] if hr is not None else hh.shape[1]
    if not (hh.is_floating_point() and ih.is_floating_point()) or hh.is_complex():
        return f"weight_hh{suffix} is {hh.dtype}, not real floating point"
    if hidden == 0 or ih.shape[1] == 0:
        return (
            f"weight_ih{suffix} {tuple(ih.shape)} and weight_hh{suffix} {tuple(hh.shape)} are empty"
        )
    if hh.layout != torch.strided or ih.layout != torch.strided:
        return "the weights are sparse; save them dense (tensor.to_dense())"
    gates, remainder = divmod(hh.shape[0], hidden)
    kind = KINDS.get(gates) if remainder == 0 else None
    if kind is None or (hr is not None and kind != "lstm"):
        return f"weight_hh{suffix} of shape {tuple(hh.shape)} fits no LSTM, GRU or RNN"
    bias = f"bias_ih{suffix}" in params
    kwargs = {"input_size": ih.shape[1], "hidden_size": hidden, "bias": bias}
    assumptions = []
    if kind == "rnn":
        kwargs["nonlinearity"] = hint.get("nonlinearity") or nonlinearity or "tanh"
        if "nonlinearity" not in hint and nonlinearity is None:
            assumptions.append("nonlinearity")
    if cell:
        factory = CELLS[kind]
        assumptions.append("cell")
    else:
        layers = 1 + max(int(PARAMETER.match(k)["layer"]) for k in params)
        reverse = any(k.endswith("_reverse") for k in params)
        if "batch_first" in hint:
            batch_first = bool(hint["batch_first"])
        elif batch_first is None:
            batch_first = False
            assumptions.append("layout")
        kwargs |= {"num_layers": layers, "bidirectional": reverse, "batch_first": batch_first}
        if hr is not None:
            kwargs["proj_size"] = hr.shape[0]
        factory = MODULES[kind]
    try:
        module = factory(**kwargs)
    except (ValueError, TypeError, RuntimeError) as error:
        return f"{factory.__name__}({kwargs}) cannot be built: {error}"
    try:
        module.load_state_dict(params, strict=True)
    except (RuntimeError, ValueError, TypeError) as error:
        detail = str(error).splitlines()[-1].strip() if str(error) else "mismatch"
        detail = detail if len(detail) <= 160 else detail[:157] + "..."
        return f"the weights do not fit {type(module).__name__}({kwargs}): {detail}"
    return InferredPart(name, module, assumptions)


def infer_recurrent(
    state_dict: Mapping[str, Tensor],
    nonlinearity: str | None = None,
    batch_first: bool | None = None,
    hints: Mapping[str, Mapping] | None = None,
) -> Inference:
    """Every PyTorch recurrent module or cell whose weights ``state_dict`` holds.

    ``hints`` maps a module path to what is known of it beyond its weights (see ``_build``).
    """
    hints = hints or {}
    state_dict, recomposed = recompose_weight_norm(state_dict)
    groups: dict[str, dict[str, Tensor]] = defaultdict(dict)
    others: dict[str, list[Tensor]] = defaultdict(list)
    for key, value in state_dict.items():
        match = PARAMETER.match(key)
        if match:
            groups[match["prefix"]][key[len(match["prefix"]) :]] = value
        else:
            others[key.rsplit(".", 1)[0] if "." in key else key].append(value)
    parts, sizes = [], {}
    for prefix, params in groups.items():
        name = _owner(prefix)
        built = _build(name, params, nonlinearity, batch_first, hints.get(name, {}))
        if isinstance(built, InferredPart):
            parts.append(built)
        else:
            sizes[f"{name or '(root)'}: {built}"] = sum(v.numel() for v in params.values())
    for owner, values in others.items():
        count = len(values)
        sizes[f"{owner} ({count} tensor{'s' * (count > 1)}): not recurrent"] = sum(
            v.numel() for v in values
        )
    return Inference(parts, sizes, recomposed)
