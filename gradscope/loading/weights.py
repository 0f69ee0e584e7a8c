"""Finding the model's weights in whatever a training script saved, and fitting their names.

Checkpoints are rarely a bare state dict: Lightning writes ``{"state_dict", "hyper_parameters",
...}``, training loops write ``{"epoch", "model_state", "optimizer_state"}``, DataParallel adds
``module.``, ``torch.compile`` adds ``_orig_mod.``, a LightningModule adds its attribute name.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

#: Keys that training scripts use for the model's weights, most specific first.
WEIGHT_KEYS = (
    "state_dict",
    "model_state_dict",
    "model_state",
    "model",
    "net",
    "network",
    "weights",
    "params",
    "module",
    "model_weights",
    "ema",
    "ema_state_dict",
)
#: Keys that hold the model's constructor arguments.
KWARG_KEYS = ("hyper_parameters", "hparams", "model_args", "model_kwargs")
#: Prefixes that wrappers add to every key: DataParallel/DDP and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class Found:
    """The model (a module or a state dict) found in a loaded object, and where."""

    model: nn.Module | dict[str, Tensor]
    key: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    lightning: bool = False


def is_state_dict(obj: object) -> bool:
    """A non-empty mapping of names to tensors."""
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def _size(obj: object) -> int:
    if isinstance(obj, nn.Module):
        return sum(p.numel() for p in obj.parameters())
    return sum(v.numel() for v in obj.values())


def _candidates(container: Mapping, path: str, depth: int) -> list[tuple[str, object]]:
    """(dotted key, value) of every module or state dict in ``container``, ``depth`` deep."""
    found = []
    for key, value in container.items():
        if not isinstance(key, str):
            continue
        name = f"{path}{key}"
        if isinstance(value, nn.Module) or is_state_dict(value):
            found.append((name, value))
        elif isinstance(value, Mapping) and depth > 0:
            found.extend(_candidates(value, f"{name}.", depth - 1))
    return found


def _kwargs(container: Mapping) -> dict[str, Any]:
    for key in KWARG_KEYS:
        value = container.get(key)
        if isinstance(value, argparse.Namespace):
            value = vars(value)
        if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
            return dict(value)
    return {}


def find_model(obj: object) -> Found | None:
    """The module or state dict in ``obj``: itself, or the weights inside a checkpoint dict.

    Known weight keys win (``state_dict``, ``model_state``, ``model``, ...); otherwise the
    largest module or state dict up to two levels deep. None when there is none.
    """
    if isinstance(obj, nn.Module) or is_state_dict(obj):
        return Found(obj)
    if not isinstance(obj, Mapping):
        return None
    lightning = "pytorch-lightning_version" in obj or (
        "state_dict" in obj and "hyper_parameters" in obj
    )
    found = dict(_candidates(obj, "", depth=2))
    if not found:
        return None
    known = [key for key in WEIGHT_KEYS if key in found]
    key = known[0] if known else max(found, key=lambda k: _size(found[k]))
    return Found(found[key], key, _kwargs(obj), lightning)


def strip_wrappers(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Drop DataParallel's ``module.`` and torch.compile's ``_orig_mod.`` from every key."""
    stripped = {}
    removed: set[str] = set()
    for key, value in state_dict.items():
        new = key
        for prefix in WRAPPER_PREFIXES:
            while new.startswith(prefix):
                new = new[len(prefix) :]
                removed.add(prefix)
            if f".{prefix}" in new:
                new = new.replace(f".{prefix}", ".")
                removed.add(prefix)
        stripped[new] = value
    if len(stripped) < len(state_dict):  # two keys collapsed into one: keep the names as saved
        return dict(state_dict), []
    return stripped, sorted(removed)


def _prefixes(keys: list[str]) -> set[str]:
    """Every leading dotted prefix of any key: ``a.b.c`` gives ``a.`` and ``a.b.``."""
    found = set()
    for key in keys:
        parts = key.split(".")[:-1]
        for end in range(1, len(parts) + 1):
            found.add(".".join(parts[:end]) + ".")
    return found


def _fit(state_dict: Mapping[str, Tensor], expected: Mapping[str, Tensor]) -> int:
    """How many expected keys the state dict supplies with the right shape."""
    return sum(1 for k, v in expected.items() if k in state_dict and state_dict[k].shape == v.shape)


def fit_prefix(
    state_dict: Mapping[str, Tensor], expected: Mapping[str, Tensor]
) -> tuple[dict[str, Tensor], str | None]:
    """The state dict with the prefix that makes its keys fit ``expected``, and what changed.

    Tries the keys as they are, under every prefix they share (a LightningModule attribute such
    as ``model.`` or ``net.encoder.``, keeping only the keys under it), and with the prefix the
    expected keys all share added. Returns the best fit and a note (None when unchanged).
    """
    options: list[tuple[dict[str, Tensor], str | None]] = [(dict(state_dict), None)]
    for prefix in sorted(_prefixes(list(state_dict))):
        under = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        options.append((under, f"read from the keys under {prefix!r}"))
    shared = [p for p in _prefixes(list(expected)) if all(k.startswith(p) for k in expected)]
    for prefix in shared:
        options.append(
            ({prefix + k: v for k, v in state_dict.items()}, f"added {prefix!r} to the keys")
        )
    best = max(
        options,
        key=lambda option: (_fit(option[0], expected), -abs(len(option[0]) - len(expected))),
    )
    return best
