"""Python source for snippets: module paths as expressions, lists that fit a line."""

from __future__ import annotations

import itertools


def module_expression(name: str, root: str = "model") -> str:
    """Python for a module path: ``layers.0.rnn`` -> ``model.layers[0].rnn``."""
    if not name:
        return root
    parts = [f"[{p}]" if p.isdigit() else f".{p}" for p in name.split(".")]
    return root + "".join(parts)


#: Largest line in a snippet.
SNIPPET_WIDTH = 76


def literal(name: str, items: list[str], brackets: str = "[]") -> list[str]:
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


def progression(numbers: list[int]) -> str | None:
    """``range(2, 100, 2)`` for an arithmetic progression of three or more numbers."""
    if len(numbers) < 3:
        return None
    step = numbers[1] - numbers[0]
    if step <= 0 or any(b - a != step for a, b in itertools.pairwise(numbers)):
        return None
    stop = numbers[-1] + step
    return f"range({numbers[0]}, {stop})" if step == 1 else f"range({numbers[0]}, {stop}, {step})"


def paths_list(paths: list[str]) -> list[str]:
    """``paths = [...]``: module paths, as a comprehension when they index one container."""
    indexed = _indexed(paths) if paths else None
    span = progression(indexed[1]) if indexed else None
    if indexed and span:
        template = indexed[0]
        item = "str(i)" if template == "{i}" else f'f"{template}"'
        return [f"paths = [{item} for i in {span}]"]
    return literal("paths", [f'"{path}"' for path in paths])
