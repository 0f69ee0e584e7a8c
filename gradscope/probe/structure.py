"""Tensors inside the structures models pass around: tuples, lists, dicts, dataclasses and
model-output objects, each tensor found by a path of indices, keys and field names."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from torch import Tensor

Path = tuple[int | str, ...]


def fields(value: object) -> dict[str, object] | None:
    """The named parts of a dict, a dataclass or a model-output object; None for others."""
    if isinstance(value, dict):
        return dict(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return None


def tensor_leaves(value: object, path: Path = ()) -> list[tuple[Path, Tensor]]:
    """Every tensor in ``value`` with its path, in order (depth first)."""
    if isinstance(value, Tensor):
        return [(path, value)]
    named = fields(value)
    if named is not None:
        items: list[tuple[int | str, object]] = list(named.items())
    elif isinstance(value, (tuple, list)):
        items = list(enumerate(value))
    else:
        return []
    return [leaf for key, item in items for leaf in tensor_leaves(item, (*path, key))]


def map_tensors(value: object, change: Callable[[Tensor], object]) -> object:
    """``value`` with ``change`` applied to every tensor in it, tuples, lists (namedtuples
    too) and dicts rebuilt around the results."""
    if isinstance(value, Tensor):
        return change(value)
    if isinstance(value, dict):
        return {key: map_tensors(item, change) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        items = [map_tensors(item, change) for item in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    return value


def pick(value: object, path: Path) -> object:
    """The part of ``value`` at ``path``."""
    for key in path:
        if isinstance(value, Tensor) or value is None:
            raise KeyError(path_text(path))
        named = fields(value)
        value = named[key] if named is not None else value[key]  # type: ignore[index]
    return value


def path_text(path: Path) -> str:
    """``[1]``, ``["skip"]``: a path as it would be written in Python."""
    return "".join(f"[{key!r}]" if isinstance(key, str) else f"[{key}]" for key in path)


def place(value: object, parts: dict[Path, object], path: Path = ()) -> object:
    """``value`` with the parts at the paths of ``parts`` put in (a path may end where
    ``value`` holds a tensor, None or nothing yet); tuples, lists (namedtuples too) and dicts
    are rebuilt around them, and a missing container is made: a tuple for indices, a dict
    for keys."""
    if path in parts:
        return parts[path]
    below = [p[len(path)] for p in parts if len(p) > len(path) and p[: len(path)] == path]
    if value is None and below:
        value = () if all(isinstance(key, int) for key in below) else {}
    if isinstance(value, dict):
        keys = dict.fromkeys([*value, *below])
        return {key: place(value.get(key), parts, (*path, key)) for key in keys}
    if isinstance(value, (list, tuple)):
        size = max([len(value), *(key + 1 for key in below if isinstance(key, int))])
        items = [
            place(value[i] if i < len(value) else None, parts, (*path, i)) for i in range(size)
        ]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    return value
