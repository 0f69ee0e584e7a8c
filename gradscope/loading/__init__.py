"""Loading a model: a checkpoint file or an object in, a model handle plus what we know of it out.

Safe by default: nothing in a file runs unless the user passes ``--trust`` (see
:mod:`gradscope.loading.files`). What is read may be a whole module, a state dict in any common
container (:mod:`~gradscope.loading.weights`) filled into ``--model``
(:mod:`~gradscope.loading.classes`) or, without a class, rebuilt from the weights alone
(:mod:`~gradscope.loading.inference`), or a TorchScript or exported program
(:mod:`~gradscope.loading.programs`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gradscope.errors import GradscopeError
from gradscope.loading import files
from gradscope.loading.classes import (
    fitting_kwargs,
    import_class,
    instantiate,
    load_weights,
    parse_model_args,
)
from gradscope.loading.inference import InferredPart, infer_recurrent
from gradscope.loading.programs import Program, load_exported, load_torchscript, script_program
from gradscope.loading.weights import Found, find_model, fit_prefix, strip_wrappers

__all__ = ["LoadedModel", "import_class", "load_model", "parse_model_args", "resolve_device"]

#: safetensors metadata keys that may name the model class and its arguments.
METADATA_CLASS_KEYS = ("model_class", "class", "model")
METADATA_ARGS_KEYS = ("model_args", "model_kwargs", "kwargs", "config")


@dataclass
class LoadedModel:
    """A model ready to probe, and how it was obtained.

    ``module`` runs the whole model (None when only weights were found). When ``parts`` is set,
    the recurrent cores are those rebuilt from the weights, each analysed on its own; otherwise
    they are found inside ``module``.
    """

    module: nn.Module | None
    format: str
    path: str | None
    notes: list[str] = field(default_factory=list)
    parts: list[InferredPart] | None = None
    not_analysed: list[str] = field(default_factory=list)
    example_inputs: tuple[Tensor, ...] = ()
    fixed_dtype: bool = False
    parameters: int = 0
    class_name: str | None = None

    def describe(self) -> dict[str, Any]:
        """The report's ``model`` object."""
        name = self.class_name
        if name is None and self.module is not None:
            name = getattr(self.module, "original_name", None) or type(self.module).__qualname__
        return {
            "path": self.path,
            "format": self.format,
            "class": name,
            "parameters": self.parameters
            or sum(p.numel() for p in (self.module.parameters() if self.module else [])),
            "architecture": "inferred from weights" if self.parts is not None else "module",
            "not_analysed": self.not_analysed,
            "notes": self.notes,
        }


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:1``, ``mps`` or ``auto`` (the first available accelerator)."""
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise GradscopeError(
            f"--device {name!r} is not a device: use cpu, cuda, mps or auto"
        ) from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": mps}
    if not available.get(device.type, False):
        raise GradscopeError(f"--device {name}: no such device on this machine; use --device cpu")
    return device


@dataclass
class LoadOptions:
    """How to read a file: the class, its arguments, trust, and assumptions for inference."""

    model: str | None = None
    model_args: str | Mapping | None = None
    trust: bool = False
    allow_globals: tuple[str, ...] = ()
    nonlinearity: str | None = None
    batch_first: bool | None = None


def _metadata_class(metadata: Mapping[str, str]) -> tuple[str | None, dict]:
    """A class spec and keyword arguments from safetensors metadata, where it names them."""
    named = [metadata.get(k, "") for k in METADATA_CLASS_KEYS]
    spec = next((v for v in named if "." in v or ":" in v), None)
    if spec and ":" not in spec:
        spec = ":".join(spec.rsplit(".", 1))
    for key in METADATA_ARGS_KEYS:
        try:
            args = json.loads(metadata.get(key, ""))
        except json.JSONDecodeError:
            continue
        if isinstance(args, dict):
            return spec, args
    return spec, {}


def _container_notes(found: Found) -> list[str]:
    if not found.key:
        return []
    return [f"weights taken from the {found.key!r} entry of the checkpoint"]


def _with_class(
    state_dict: dict[str, Tensor], spec: str, saved_kwargs: Mapping, options: LoadOptions
) -> tuple[nn.Module, list[str]]:
    """``spec``'s class built with the saved and given arguments, and filled with the weights."""
    cls = import_class(spec)
    saved = fitting_kwargs(cls, saved_kwargs)
    kwargs = saved | parse_model_args(options.model_args)
    module = instantiate(cls, kwargs)
    state_dict, prefix_note = fit_prefix(state_dict, module.state_dict())
    load_weights(module, state_dict)
    notes = [f"weights {prefix_note}"] if prefix_note else []
    if saved:
        notes.append(f"constructor arguments from the checkpoint: {', '.join(sorted(saved))}")
    return module, notes


def _inferred(
    state_dict: dict[str, Tensor], path: Path, fmt: str, notes: list[str], options: LoadOptions
) -> LoadedModel:
    inference = infer_recurrent(state_dict, options.nonlinearity, options.batch_first)
    if not inference.parts:
        raise GradscopeError(
            f"{path} holds only weights, and none belongs to a recurrent module (nn.RNN, "
            "nn.LSTM, nn.GRU or a cell); pass the model's class with --model "
            "package.module:Class (and --model-args)"
        )
    notes = notes + inference.assumptions()
    if inference.not_analysed:
        notes.append("pass --model package.module:Class to analyse the whole model")
    size = sum(v.numel() for v in state_dict.values())
    return LoadedModel(
        None,
        fmt,
        str(path),
        notes,
        parts=inference.parts,
        not_analysed=inference.not_analysed,
        parameters=size,
    )


def _from_program(
    program: Program, fmt: str, path: str | None, options: LoadOptions
) -> LoadedModel:
    inference = infer_recurrent(
        program.state_dict, options.nonlinearity, options.batch_first, program.hints
    )
    if not inference.parts:
        raise GradscopeError(
            f"{path or 'the program'} has no recurrent module (nn.RNN, nn.LSTM, nn.GRU or a "
            "cell) among its weights; gradscope's recurrent analysis needs one"
        )
    notes = inference.assumptions()
    what = {files.TORCHSCRIPT: "a TorchScript archive", files.EXPORTED: "an exported program"}
    notes.append(
        f"{what[fmt]} runs as a whole, so its recurrent cores were rebuilt from its weights and "
        "analysed on their own; the input gradient is the whole model's"
    )
    return LoadedModel(
        program.module,
        fmt,
        path,
        notes,
        parts=inference.parts,
        not_analysed=inference.not_analysed,
        example_inputs=program.example_inputs,
        fixed_dtype=program.fixed_dtype,
        class_name=program.class_name,
    )


def _read(path: Path, kind: str, options: LoadOptions) -> tuple[object, dict]:
    """The object in a file of format ``kind``, and its safetensors metadata (else empty)."""
    if kind == files.SAFETENSORS:
        tensors, metadata = files.read_safetensors(path)
        return tensors, metadata
    if kind in (files.TORCH, files.LEGACY):
        return files.read_pickle(path, options.trust, options.allow_globals), {}
    raise files.unknown_format(path)


def _nothing_found(path: Path, obj: object) -> GradscopeError:
    if isinstance(obj, Mapping):
        keys = ", ".join(str(k) for k in list(obj)[:6]) or "none"
        return GradscopeError(
            f"{path} holds a dict with no model or weights in it (keys: {keys}); save the model "
            "with torch.save(model.state_dict())"
        )
    return GradscopeError(
        f"{path} holds a {type(obj).__name__}, not a model or a state_dict; save the model "
        "with torch.save(model) or torch.save(model.state_dict())"
    )


def load_model(source: str | Path | nn.Module, **options: Any) -> LoadedModel:
    """Load a checkpoint file (or copy a module object) into a :class:`LoadedModel`.

    ``options`` are the fields of :class:`LoadOptions`.
    """
    options = LoadOptions(**options)
    if isinstance(source, torch.jit.ScriptModule):
        return _from_program(script_program(source), files.TORCHSCRIPT, None, options)
    if isinstance(source, nn.Module):
        try:
            return LoadedModel(copy.deepcopy(source), "object", None)
        except Exception as error:
            raise GradscopeError(
                f"cannot copy the model object ({type(error).__name__}: {error}); pass a path "
                "to a checkpoint instead"
            ) from None
    path = Path(source)
    files.check_file(path)
    kind = files.sniff(path)
    if kind == files.TORCHSCRIPT:
        return _from_program(load_torchscript(path, options.trust), kind, str(path), options)
    if kind == files.EXPORTED:
        return _from_program(load_exported(path, options.trust), kind, str(path), options)
    obj, metadata = _read(path, kind, options)
    found = find_model(obj)
    if found is None:
        raise _nothing_found(path, obj)
    notes = _container_notes(found)
    if isinstance(found.model, nn.Module):
        if options.model:
            notes.append(f"--model {options.model} ignored: the file holds a whole module")
        return LoadedModel(found.model, "pickled-module", str(path), notes)
    fmt = "safetensors" if kind == files.SAFETENSORS else "state-dict"
    if found.lightning:
        fmt = "lightning-checkpoint"
    state_dict, removed = strip_wrappers(found.model)
    notes += [f"key prefix {prefix!r} removed (a training wrapper adds it)" for prefix in removed]
    spec, saved_kwargs = options.model, found.kwargs
    if spec is None and metadata:
        spec, saved_kwargs = _metadata_class(metadata)
        if spec:
            notes.append(f"class {spec} named by the file's metadata")
    if spec is None:
        return _inferred(state_dict, path, fmt, notes, options)
    module, class_notes = _with_class(state_dict, spec, saved_kwargs, options)
    return LoadedModel(module, fmt, str(path), notes + class_notes)
