"""Kinds of module, named once for every view: recurrent, container, activation, norm, weighted.

Kinds are kept as ``torch.nn`` class names, so that diagnosis (which never imports torch) can
read the activation a report names, and the views turn them into classes with :func:`classes`
for ``isinstance`` checks.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

RECURRENT_MODULES = ("RNN", "LSTM", "GRU")
RECURRENT_CELLS = ("RNNCell", "LSTMCell", "GRUCell")
RECURRENT = (*RECURRENT_MODULES, *RECURRENT_CELLS)
CONVOLUTIONS = ("Conv1d", "Conv2d", "Conv3d")
CONTAINERS = ("Sequential", "ModuleList", "ModuleDict")
#: Activations whose slope falls towards 0 away from the origin.
SATURATING = ("Sigmoid", "Tanh", "Hardtanh", "Softsign", "Hardsigmoid")
#: Rectifiers whose units can die (zero for every input).
RECTIFYING = ("ReLU", "ReLU6")
ACTIVATIONS = (
    *SATURATING,
    *RECTIFYING,
    "GELU",
    "SiLU",
    "Mish",
    "LeakyReLU",
    "PReLU",
    "ELU",
    "SELU",
    "CELU",
    "Softplus",
    "Hardswish",
)
NORMS = (
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "LayerNorm",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "RMSNorm",
)
#: Modules whose weights mix features: only a block with one can hold a residual branch.
WEIGHTED = (
    "Linear",
    "Bilinear",
    *CONVOLUTIONS,
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "MultiheadAttention",
)
#: Modules that join the block of the module whose output they read.
FOLLOWERS = (*ACTIVATIONS, *NORMS, "Dropout", "Dropout1d", "Dropout2d", "Identity")
#: Activations whose He (kaiming) gain is ReLU's, by lowercase name.
RELU_LIKE = ("relu", "leakyrelu", "prelu", "rrelu", "relu6")
#: Lowercase names that mean "no activation".
LINEAR = ("linear", "identity", "none", "")


@cache
def classes(names: tuple[str, ...]) -> tuple[type[nn.Module], ...]:
    """The ``torch.nn`` classes of a kind, for ``isinstance``."""
    from torch import nn

    return tuple(getattr(nn, name) for name in names)


def type_name(module: nn.Module) -> str:
    """The class name of a module, or of the module a TorchScript submodule was scripted from."""
    return getattr(module, "original_name", None) or type(module).__name__


def is_kind(module: nn.Module, names: tuple[str, ...]) -> bool:
    """Whether ``module`` is one of the ``torch.nn`` classes ``names`` (subclasses too), or a
    TorchScript module scripted from one. A user class that only shares a name is not."""
    import torch

    if isinstance(module, classes(names)):
        return True
    return isinstance(module, torch.jit.ScriptModule) and type_name(module) in names


def size_attribute(module: nn.Module, name: str) -> int | None:
    """A size the module states (``in_features``, ``num_embeddings``, ...), if it is a positive
    integer; None when the attribute is missing or of another kind."""
    value = getattr(module, name, None)
    if isinstance(value, (tuple, list)) and value:  # normalized_shape, a torch.Size
        value = value[-1]
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def is_builtin_recurrent(module: nn.Module) -> bool:
    """Whether ``module`` is one of PyTorch's recurrent modules or cells (subclasses too)."""
    return isinstance(module, classes(RECURRENT))


def is_recurrent(module: nn.Module) -> bool:
    """A PyTorch recurrent module or cell, or a TorchScript module scripted from one."""
    return is_kind(module, RECURRENT)


def is_recurrent_cell(module: nn.Module) -> bool:
    """Whether ``module`` is one of PyTorch's recurrent cells, stepped by the user's loop."""
    return isinstance(module, classes(RECURRENT_CELLS))


def recurrent_modules(model: nn.Module, scripted: bool = True) -> list[tuple[str, nn.Module]]:
    """Every recurrent module and cell in ``model``, by module path ("" for the root).

    ``scripted=False`` leaves out TorchScript ones, which cannot be stepped from inside.
    """
    found = is_recurrent if scripted else is_builtin_recurrent
    return [(name, module) for name, module in model.named_modules() if found(module)]


def activation_key(name: str | None) -> str | None:
    """``"LeakyReLU"`` -> ``"leakyrelu"``; ``None`` for no activation."""
    if name is None:
        return None
    key = name.lower().replace("_", "")
    return None if key in LINEAR else key


def saturates(name: str | None) -> bool:
    """Whether an activation (by class name, any case) saturates: sigmoid, tanh and their kin."""
    return activation_key(name) in SATURATING_KEYS


#: Saturating activations by lowercase name, with their ``nn`` class name.
SATURATING_KEYS = {name.lower(): name for name in SATURATING}


def is_within(path: str, parents: Iterable[str]) -> bool:
    """Whether the module at ``path`` is one of ``parents`` or inside one (``""`` holds all)."""
    return any(
        parent == "" or path == parent or path.startswith(parent + ".") for parent in parents
    )
