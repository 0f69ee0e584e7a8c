"""What depends on what, read from the autograd graph of a probe run."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import Tensor


def graph_nodes(outputs: Iterable[Tensor]) -> tuple[set[int], set[int]]:
    """(ids of the graph nodes, ids of the leaf tensors) that ``outputs`` depend on."""
    nodes: set[int] = set()
    leaves: set[int] = set()
    stack = []
    for tensor in outputs:
        if tensor.grad_fn is not None:
            stack.append(tensor.grad_fn)
        elif tensor.requires_grad:
            leaves.add(id(tensor))
    while stack:
        node = stack.pop()
        if id(node) in nodes:
            continue
        nodes.add(id(node))
        variable = getattr(node, "variable", None)
        if isinstance(variable, Tensor):
            leaves.add(id(variable))
        stack.extend(child for child, _ in node.next_functions if child is not None)
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
