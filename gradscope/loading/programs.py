"""TorchScript archives and exported programs: models saved as code, opened only with ``--trust``.

Neither runs Python ``forward`` methods, so gradscope cannot step their recurrent modules from
inside. Their weights and what the program records about each recurrent module (its kind, its
nonlinearity, its input layout) rebuild exact cores; the program itself still runs forward and
backward on the probe, for the model's input gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from gradscope.errors import GradscopeError, first_line
from gradscope.loading.files import quiet

#: ATen recurrent ops in an exported graph, and the nonlinearity each implies.
ATEN_RECURRENT = {"lstm": None, "gru": None, "rnn_tanh": "tanh", "rnn_relu": "relu"}
#: Position of ``batch_first`` in the arguments of ``aten.lstm/gru/rnn_*.input``.
BATCH_FIRST_ARG = 8


@dataclass
class Program:
    """A loaded program: the runnable module, its weights, and what it says of its cores."""

    module: nn.Module
    state_dict: dict[str, Tensor]
    hints: dict[str, dict] = field(default_factory=dict)
    example_inputs: tuple[Tensor, ...] = ()
    fixed_dtype: bool = False
    class_name: str | None = None


def _refuse(path: Path, what: str) -> GradscopeError:
    return GradscopeError(
        f"{path} is {what}, which is code: loading it runs it; pass --trust to load it (only "
        "for files you trust), or save model.state_dict() instead"
    )


def load_torchscript(path: Path, trust: bool) -> Program:
    """A ``torch.jit.save`` archive, with the attributes its recurrent submodules keep."""
    if not trust:
        raise _refuse(path, "a TorchScript archive")
    try:
        with quiet():
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as error:
        raise GradscopeError(
            f"{path} is a TorchScript archive that cannot be loaded "
            f"({type(error).__name__}: {first_line(error)}); save it again with torch.jit.save"
        ) from None
    return script_program(module)


def script_program(module: torch.jit.ScriptModule) -> Program:
    """A scripted module with the attributes its recurrent submodules keep."""
    hints = {}
    for name, sub in module.named_modules():
        hint = {}
        for attribute in ("nonlinearity", "batch_first"):
            try:
                hint[attribute] = getattr(sub, attribute)
            except (AttributeError, RuntimeError):
                continue
        if hint:
            hints[name] = hint
    return Program(module, dict(module.state_dict()), hints, class_name=module.original_name)


def _graph_hints(program: torch.export.ExportedProgram) -> dict[str, dict]:
    """Nonlinearity and layout of every recurrent op in the graph, by its module path."""
    parameters = program.graph_signature.inputs_to_parameters
    hints = {}
    for node in program.graph.nodes:
        op = getattr(getattr(node.target, "_overloadpacket", None), "__name__", "")
        if node.op != "call_function" or op not in ATEN_RECURRENT:
            continue
        weights = [a for a in node.args if isinstance(a, (list, tuple))]
        names = [parameters.get(getattr(w, "name", None)) for ws in weights for w in ws]
        first = next((n for n in names if n), None)
        if first is None or len(node.args) <= BATCH_FIRST_ARG:
            continue
        owner = first.rsplit(".", 1)[0] if "." in first else ""
        hint = {"batch_first": bool(node.args[BATCH_FIRST_ARG])}
        if ATEN_RECURRENT[op]:
            hint["nonlinearity"] = ATEN_RECURRENT[op]
        hints[owner] = hint
    return hints


def load_exported(path: Path, trust: bool) -> Program:
    """A ``torch.export.save`` program: its module, weights, example inputs and graph hints."""
    if not trust:
        raise _refuse(path, "an exported program (torch.export.load unpickles it as code)")
    try:
        with quiet():
            program = torch.export.load(str(path))
        module = program.module()
    except Exception as error:
        reason = f"{type(error).__name__}: {first_line(error)}"
        advice = "export it again with the PyTorch version that runs gradscope"
        if "CUDA" in reason and not torch.cuda.is_available():
            advice = (
                "it was exported on a GPU, and an exported program is pinned to its device: "
                "run gradscope with --device cuda where there is one, or export on the CPU"
            )
        raise GradscopeError(
            f"{path} is an exported program that cannot be loaded ({reason}); {advice}"
        ) from None
    args = program.example_inputs[0] if program.example_inputs else ()
    examples = tuple(a for a in args if isinstance(a, Tensor))
    state = {k: v for k, v in program.state_dict.items() if isinstance(v, Tensor)}
    return Program(module, state, _graph_hints(program), examples, True, "ExportedProgram")
