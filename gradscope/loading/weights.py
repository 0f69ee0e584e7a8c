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


#: Values a state dict may hold beside tensors (``_extra_state``, version numbers).
SCALARS = (type(None), bool, int, float, str)


@dataclass
class Found:
    """The model (a module or a state dict) found in a loaded object, and where.

    ``others`` holds the other modules and state dicts in the same object, by key; ``known`` is
    True when the chosen key is one that training scripts use for the model's weights.
    """

    model: nn.Module | dict[str, Tensor]
    key: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    lightning: bool = False
    others: dict[str, object] = field(default_factory=dict)
    known: bool = True


def is_state_dict(obj: object) -> bool:
    """A mapping of names to tensors (beside them, at most scalars such as version numbers)."""
    return (
        isinstance(obj, Mapping)
        and all(isinstance(k, str) for k in obj)
        and any(isinstance(v, Tensor) for v in obj.values())
        and all(isinstance(v, (Tensor, *SCALARS)) for v in obj.values())
    )


def tensors_only(state_dict: Mapping[str, object]) -> dict[str, Tensor]:
    """The tensor entries of a state dict."""
    return {k: v for k, v in state_dict.items() if isinstance(v, Tensor)}


def _size(obj: object) -> int:
    if isinstance(obj, nn.Module):
        return sum(p.numel() for p in obj.parameters())
    return sum(v.numel() for v in obj.values() if isinstance(v, Tensor))


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
    others = {k: v for k, v in found.items() if k != key}
    return Found(found[key], key, _kwargs(obj), lightning, others, bool(known))


def strip_wrappers(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Drop DataParallel's leading ``module.`` and torch.compile's ``_orig_mod.`` from the keys.

    ``module.`` counts only in front of every key: models may name an attribute ``module``.
    """
    removed = []
    keys = list(state_dict)
    stripped = dict(state_dict)
    if keys and all(k.startswith("module.") for k in keys):
        stripped = {k[len("module.") :]: v for k, v in stripped.items()}
        removed.append("module.")
    if any(k.startswith("_orig_mod.") or "._orig_mod." in k for k in stripped):
        renamed = {
            k.removeprefix("_orig_mod.").replace("._orig_mod.", "."): v for k, v in stripped.items()
        }
        if len(renamed) == len(stripped):
            stripped = renamed
            removed.append("_orig_mod.")
    return stripped, removed


def _prefixes(keys: list[str]) -> set[str]:
    """Every leading dotted prefix of any key: ``a.b.c`` gives ``a.`` and ``a.b.``."""
    found = set()
    for key in keys:
        parts = key.split(".")[:-1]
        for end in range(1, len(parts) + 1):
            found.add(".".join(parts[:end]) + ".")
    return found


def fit_score(state_dict: Mapping[str, Tensor], expected: Mapping[str, Tensor]) -> int:
    """How many expected keys the state dict supplies with the right shape."""
    return sum(1 for k, v in expected.items() if k in state_dict and state_dict[k].shape == v.shape)


def fit_prefix(
    state_dict: Mapping[str, Tensor], expected: Mapping[str, Tensor]
) -> tuple[dict[str, Tensor], str | None]:
    """The state dict with the prefix that makes its keys fit ``expected``, and what changed.

    Tries the keys as they are, under every prefix they share (a LightningModule attribute such
    as ``model.`` or ``net.encoder.``, keeping only the keys under it), and with the prefix the
    expected keys all share added. Returns the best fit and a note (None when unchanged); a
    prefix that fits no more keys than the names as saved is not applied, so that a mismatch
    is reported under the names the file holds.
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

    def score(option: tuple[dict, str | None]) -> tuple[int, int, int]:
        fitted, note = option
        return (fit_score(fitted, expected), -abs(len(fitted) - len(expected)), -len(note or ""))

    ranked = sorted(options, key=score, reverse=True)
    best = ranked[0]
    if score(best)[0] == score(options[0])[0]:
        return options[0]  # no prefix fits more keys: the names stay as saved, for the message
    ties = [option[1] for option in ranked[1:] if score(option)[:2] == score(best)[:2]]
    if ties and best[1] is not None:
        also = ", ".join(note.removeprefix("read from the keys under ") for note in ties if note)
        return best[0], f"{best[1]} (the keys under {also} fit too: another copy of the model?)"
    return best
