"""What depends on what, read from the autograd graph of a probe run."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator

from torch import Tensor


def walk(starts: Iterable[object], stops: set[int] = frozenset()) -> Iterator[object]:
    """Every autograd node from ``starts`` back through the graph, once each, not past the
    nodes whose ids are in ``stops``."""
    seen: set[int] = set()
    stack = list(starts)
    while stack:
        node = stack.pop()
        if node is None or id(node) in stops or id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        stack.extend(child for child, _ in node.next_functions)


def graph_nodes(outputs: Iterable[Tensor]) -> tuple[set[int], set[int]]:
    """(ids of the graph nodes, ids of the leaf tensors) that ``outputs`` depend on."""
    outputs = list(outputs)
    leaves = {id(t) for t in outputs if t.grad_fn is None and t.requires_grad}
    nodes: set[int] = set()
    for node in walk(t.grad_fn for t in outputs):
        nodes.add(id(node))
        variable = getattr(node, "variable", None)
        if isinstance(variable, Tensor):
            leaves.add(id(variable))
    return nodes, leaves


def parameters_reached(outputs: Iterable[Tensor]) -> set[int]:
    """The ids of the leaf tensors (parameters) that ``outputs`` depend on."""
    return graph_nodes(outputs)[1]


def depends_on(outputs: Iterable[Tensor]) -> Callable[[Tensor], bool]:
    """A test of whether ``outputs`` depend on a tensor computed in the same graph."""
    nodes, leaves = graph_nodes(outputs)

    def test(tensor: Tensor) -> bool:
        if tensor.grad_fn is not None:
            return id(tensor.grad_fn) in nodes
        return id(tensor) in leaves

    return test


def within_reach(start: object, goals: set[int], limit: int) -> bool:
    """Whether autograd node ``start`` depends on one of the nodes whose ids are ``goals``
    within ``limit`` nodes, nearest first: a cheap test that stops early on long graphs
    (False when unsure)."""
    seen: set[int] = set()
    queue = deque([start])
    while queue and len(seen) < limit:
        node = queue.popleft()
        if node is None:
            continue
        if id(node) in goals:
            return True
        if id(node) in seen:
            continue
        seen.add(id(node))
        queue.extend(child for child, _ in node.next_functions)
    return False


def reaches(tensor: Tensor, targets: Iterable[Tensor], limit: int = 2048) -> bool:
    """Whether ``tensor`` was computed from one of ``targets`` (:func:`within_reach`)."""
    goals = {id(t.grad_fn) for t in targets if t.grad_fn is not None}
    if tensor.grad_fn is None or not goals:
        return False
    return within_reach(tensor.grad_fn, goals, limit)
