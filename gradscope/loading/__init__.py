"""Loading a model: a checkpoint file or an object in, a model handle plus what we know of it out.

Safe by default: nothing in a file runs unless the user passes ``--trust`` (see
:mod:`gradscope.loading.files`). What is read may be a whole module, a state dict in any common
container (:mod:`~gradscope.loading.weights`) filled into ``--model``
(:mod:`~gradscope.loading.classes`) or, without a class, rebuilt from the weights alone
(:mod:`~gradscope.loading.inference`), or a TorchScript or exported program
(:mod:`~gradscope.loading.programs`). A folder or an index holds sharded safetensors, read
lazily (:mod:`~gradscope.loading.shards`), or a torch.distributed.checkpoint
(:mod:`~gradscope.loading.distributed`).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gradscope.errors import GradscopeError
from gradscope.hub import is_hub_id
from gradscope.loading import files
from gradscope.loading.classes import (
    fitting_kwargs,
    import_class,
    import_module_of,
    instantiate,
    load_weights,
    parse_model_args,
)
from gradscope.loading.distributed import read_distributed_nested
from gradscope.loading.huggingface import cached_folder, load_pretrained, pretrained_folder
from gradscope.loading.inference import InferredPart, infer_recurrent
from gradscope.loading.programs import Program, load_exported, load_torchscript, script_program
from gradscope.loading.shards import ShardedSafetensors, checkpoint_in, open_sharded
from gradscope.loading.streaming import WeightStream
from gradscope.loading.weights import (
    Found,
    find_model,
    fit_prefix,
    fit_score,
    strip_wrappers,
    tensors_only,
)
from gradscope.options import LoadOptions, selects_weight
from gradscope.report import ModelDescription

__all__ = [
    "HF_KIND",
    "LoadedModel",
    "import_class",
    "load_model",
    "parse_model_args",
    "resolve_device",
]

#: safetensors metadata keys that may name the model class and its arguments.
METADATA_CLASS_KEYS = ("model_class", "class", "model")
METADATA_ARGS_KEYS = ("model_args", "model_kwargs", "kwargs", "config")
#: ``package.module:Class``: the only shape of class name taken from a file.
CLASS_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
NO_OPTIONS = LoadOptions()
#: The report's name for a Hugging Face model folder.
HF_KIND = "hugging-face"
#: The report's name for a state dict read from each format (``state-dict`` for the others).
CHECKPOINT_KINDS = {
    files.SAFETENSORS: "safetensors",
    files.SHARDED: "sharded-safetensors",
    files.DISTRIBUTED: "distributed-checkpoint",
}


@dataclass
class LoadedModel:
    """A model ready to probe, and how it was obtained.

    ``module`` runs the whole model (None when only weights were found). When ``parts`` is set,
    the recurrent cores are those rebuilt from the weights, each analysed on its own; otherwise
    they are found inside ``module``.
    """

    module: nn.Module | None
    checkpoint_kind: str
    path: str | None
    notes: list[str] = field(default_factory=list)
    parts: list[InferredPart] | None = None
    not_analysed: dict[str, int] = field(default_factory=dict)  # why -> elements left out
    example_inputs: tuple[Tensor, ...] = ()
    fixed_dtype: bool = False
    parameters: int = 0
    class_name: str | None = None
    #: The weights as read, by name, when no module holds them all (a state dict rebuilt).
    weights: Mapping[str, Tensor] | None = None
    #: The dtype the checkpoint says its model is in (a Hugging Face config's), if any.
    dtype: str | None = None
    #: The input shape the checkpoint's config gives (an image model's), if any.
    input_shape: tuple[int, ...] | None = None
    #: The inputs the checkpoint's config describes (see ``huggingface.Pretrained.inputs``),
    #: and whether they serve only where the model's modules do not say what it reads.
    config_inputs: dict[str, int | tuple[int, ...]] | None = None
    config_fallback: bool = False
    #: The most positions the model embeds, where its config says.
    max_steps: int | None = None
    #: The weights ``--only`` leaves out, read from the checkpoint as the model runs
    #: (:mod:`gradscope.loading.streaming`); None when the model holds all its weights.
    stream: WeightStream | None = None
    #: Whether ``input_shape`` is (batch, steps, features): a sequence the config describes.
    sequence_input: bool = False

    def describe(self, later_notes: Sequence[str] = ()) -> ModelDescription:
        """The report's ``model`` object, with notes from the stages after loading."""
        name = self.class_name
        if name is None and self.module is not None:
            name = getattr(self.module, "original_name", None) or type(self.module).__qualname__
        return ModelDescription(
            path=self.path,
            checkpoint_kind=self.checkpoint_kind,
            class_name=name,
            parameters=self.parameters
            or sum(p.numel() for p in (self.module.parameters() if self.module else [])),
            architecture="inferred from weights" if self.parts is not None else "module",
            not_analysed=list(self.not_analysed),
            notes=[*self.notes, *later_notes],
        )


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


def _metadata_class(metadata: Mapping[str, str]) -> tuple[str | None, dict]:
    """A class spec (``package.module:Class``) and keyword arguments from safetensors metadata."""
    named = [metadata.get(k, "") for k in METADATA_CLASS_KEYS]
    spec = next((v for v in named if CLASS_SPEC.match(v)), None)
    for key in METADATA_ARGS_KEYS:
        try:
            args = json.loads(metadata.get(key, ""))
        except json.JSONDecodeError:
            continue
        if isinstance(args, dict):
            return spec, args
    return spec, {}


def _container_notes(found: Found) -> list[str]:
    notes = []
    if found.key:
        notes.append(f"weights taken from the {found.key!r} entry of the checkpoint")
    if found.others:
        others = ", ".join(repr(k) for k in found.others)
        notes.append(f"the checkpoint holds other weights too, not analysed: {others}")
    return notes


def _build_with(
    cls: type, saved: Mapping[str, Any], given: Mapping[str, Any]
) -> tuple[nn.Module, list[str]]:
    """``cls`` built from the checkpoint's hyper-parameters and ``--model-args`` (which win).

    A constructor taking ``**kwargs`` gets every saved hyper-parameter first, and only those
    it names if that fails. Returns the module and the saved names it was given.
    """
    kwargs = fitting_kwargs(cls, saved)
    named = fitting_kwargs(cls, saved, named_only=True)
    if kwargs != named:
        try:
            return cls(**(kwargs | given)), sorted(kwargs)
        except Exception:
            kwargs = named
    source = []
    if kwargs:
        source.append(f"{', '.join(sorted(kwargs))} from the checkpoint")
    if given:
        source.append(f"{', '.join(sorted(given))} from --model-args")
    return instantiate(cls, kwargs | given, " and ".join(source)), sorted(kwargs)


def _with_class(
    state_dict: dict[str, Tensor],
    original: dict[str, Tensor],
    spec: str,
    saved_kwargs: Mapping,
    options: LoadOptions,
) -> tuple[nn.Module, list[str]]:
    """``spec``'s class built with the saved and given arguments, and filled with the weights.

    ``original`` holds the keys as saved, before wrapper prefixes were removed: a model may
    name an attribute ``module`` itself.
    """
    cls = import_class(spec)
    given = parse_model_args(options.model_args)
    module, used = _build_with(cls, saved_kwargs, given)
    expected = module.state_dict()
    fits = [fit_prefix(weights, expected) for weights in (state_dict, original)]
    fitted, prefix_note = max(fits, key=lambda fit: fit_score(fit[0], expected))
    load_weights(module, fitted)
    notes = [f"weights {prefix_note}"] if prefix_note else []
    used = [name for name in used if name not in given]
    if used:
        notes.append(f"constructor arguments from the checkpoint: {', '.join(used)}")
    return module, notes


def _inferred(
    state_dict: dict[str, Tensor],
    path: Path,
    checkpoint_kind: str,
    notes: list[str],
    options: LoadOptions,
    unread: Mapping[str, int] | None = None,
) -> LoadedModel:
    """The recurrent parts rebuilt from ``state_dict``; ``unread``: modules ``--only`` left
    unread, by size, reported as not analysed."""
    inference = infer_recurrent(state_dict, options.nonlinearity, options.batch_first)
    if not inference.parts:
        rebuilt = [entry for entry in inference.not_analysed if "not recurrent" not in entry]
        why = f" ({'; '.join(rebuilt[:3])})" if rebuilt else ""
        raise GradscopeError(
            f"{path} holds only weights, and none could be rebuilt as a recurrent module (nn.RNN, "
            f"nn.LSTM, nn.GRU or a cell){why}; pass the model's class with --model "
            "package.module:Class (and --model-args)"
        )
    notes = notes + inference.assumptions()
    if inference.recomposed:
        notes.append(f"weight norm folded into {', '.join(inference.recomposed)}")
    if inference.not_analysed:
        notes.append("pass --model package.module:Class to analyse the whole model")
    unread = dict(unread or {})
    size = sum(v.numel() for v in state_dict.values()) + sum(unread.values())
    return LoadedModel(
        None,
        checkpoint_kind,
        str(path),
        notes,
        parts=inference.parts,
        not_analysed={**inference.not_analysed, **unread},
        parameters=size,
        weights=state_dict,
    )


def _pretrained(folder: Path, options: LoadOptions) -> LoadedModel:
    """A Hugging Face model folder, built by transformers (see :mod:`.huggingface`)."""
    built = load_pretrained(
        folder, options.trust, options.allow_globals, options.only, options.stream
    )
    notes = built.notes
    if options.model:
        notes.append(f"--model {options.model} ignored: the folder's config names the model")
    return LoadedModel(
        built.module,
        HF_KIND,
        str(folder),
        notes,
        dtype=built.dtype,
        class_name=type(built.module).__name__,
        input_shape=built.input_shape,
        config_inputs=built.inputs,
        config_fallback=built.fallback,
        max_steps=built.max_steps,
        stream=built.stream,
        sequence_input=built.sequence_input,
    )


def _from_program(
    program: Program, checkpoint_kind: str, path: str | None, options: LoadOptions
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
        f"{what[checkpoint_kind]} runs as a whole, so its recurrent cores were rebuilt from its "
        "weights and analysed on their own; the input gradient is the whole model's"
    )
    return LoadedModel(
        program.module,
        checkpoint_kind,
        path,
        notes,
        parts=inference.parts,
        not_analysed=inference.not_analysed,
        example_inputs=program.example_inputs,
        fixed_dtype=program.fixed_dtype,
        class_name=program.class_name,
    )


def _read(path: Path, kind: str, options: LoadOptions) -> tuple[object, dict, dict[str, int]]:
    """The object in a file of format ``kind``, its safetensors metadata (else empty), and
    the modules ``--only`` left unread (``owner: left out by --only`` -> size)."""
    if kind == files.SAFETENSORS:
        tensors, metadata = files.read_safetensors(path)
        return tensors, metadata, {}
    if kind == files.SHARDED:
        sharded = open_sharded(path)
        metadata = sharded.metadata()
        names_a_class = options.trust and _metadata_class(metadata)[0] is not None
        if not options.only or options.model or names_a_class:
            return sharded.read(), metadata, {}
        tensors, unread = _selected_shards(sharded, path, options)
        return tensors, metadata, unread
    if kind == files.DISTRIBUTED:
        if not options.only or options.model:
            return read_distributed_nested(path, options.trust)[0], {}, {}
        nested, unread = read_distributed_nested(
            path, options.trust, lambda name: selects_weight(options.only, name)
        )
        return nested, {}, _left_out_owners(unread)
    if kind in (files.TORCH, files.LEGACY):
        script = (lambda: import_module_of(options.model)) if options.model else None
        return files.read_pickle(path, options.trust, options.allow_globals, script), {}, {}
    raise files.unknown_format(path)


#: The suffix of a ``not_analysed`` entry for a module ``--only`` left unread.
LEFT_OUT_SUFFIX = ": left out by --only"


def _selected_shards(
    sharded: ShardedSafetensors, path: Path, options: LoadOptions
) -> tuple[dict[str, Tensor], dict[str, int]]:
    """The tensors of the modules ``--only`` selects, read from their shards alone, and the
    size of each module left unread (from the shards' headers)."""
    chosen = [name for name in sharded if selects_weight(options.only, name)]
    if not chosen:
        owners = ", ".join(dict.fromkeys(name.rsplit(".", 1)[0] for name in sharded))
        raise GradscopeError(
            f"--only {' '.join(options.only)} selects none of the tensors in {path} (modules: "
            f"{owners[:300]}): give a module path or a glob such as 'encoder.*'"
        )
    left = [name for name in sharded if name not in set(chosen)]
    return sharded.read(chosen), _left_out_owners(sharded.sizes(left))


def _left_out_owners(sizes: Mapping[str, int]) -> dict[str, int]:
    """``not_analysed`` entries for the tensors ``--only`` left unread: their modules, by
    size."""
    owners: dict[str, int] = {}
    for name, size in sizes.items():
        owner = f"{name.rsplit('.', 1)[0]}{LEFT_OUT_SUFFIX}"
        owners[owner] = owners.get(owner, 0) + size
    return owners


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


def load_model(source: str | Path | nn.Module, options: LoadOptions = NO_OPTIONS) -> LoadedModel:
    """Load a checkpoint file (or copy a module object) into a :class:`LoadedModel`."""
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
    if not path.exists() and is_hub_id(str(source)):  # a Hub model, if it is in the cache
        loaded = _pretrained(cached_folder(str(source)), options)
        loaded.notes.insert(1, f"{source} read from the local Hugging Face cache: {loaded.path}")
        return loaded
    folder = pretrained_folder(path)
    if folder is not None:
        return _pretrained(folder, options)
    if path.is_dir():
        kind, path = checkpoint_in(path)
    else:
        files.check_file(path)
        kind = files.sniff(path)
    if kind in (files.TORCHSCRIPT, files.EXPORTED):
        load = load_torchscript if kind == files.TORCHSCRIPT else load_exported
        loaded = _from_program(load(path, options.trust), kind, str(path), options)
        if options.model:
            loaded.notes.append(f"--model {options.model} ignored: the file holds a program")
        return loaded
    obj, metadata, unread = _read(path, kind, options)
    found = find_model(obj)
    if found is None:
        raise _nothing_found(path, obj)
    notes = _container_notes(found)
    if isinstance(found.model, nn.Module):
        if options.model and kind == files.TORCH and files.script_classes(path):
            notes.append(f"the script's classes (__main__) read from --model {options.model}")
        elif options.model:
            notes.append(f"--model {options.model} ignored: the file holds a whole module")
        return LoadedModel(found.model, "pickled-module", str(path), notes)
    checkpoint_kind = CHECKPOINT_KINDS.get(kind, "state-dict")
    if found.lightning:
        checkpoint_kind = "lightning-checkpoint"
    original = tensors_only(found.model)
    state_dict, removed = strip_wrappers(original)
    spec, saved_kwargs = options.model, found.kwargs
    named, metadata_kwargs = _metadata_class(metadata)
    saved_kwargs = saved_kwargs or metadata_kwargs
    if spec is None and named:
        if options.trust:
            spec = named
            notes.append(f"class {named} named by the file's metadata (--trust)")
        else:
            notes.append(
                f"the file's metadata names the class {named}: pass --model {named} to analyse "
                "the whole model (gradscope imports a class a file names only when you say so)"
            )
    if spec is None:
        if not found.known and found.others:  # no key says which: every part of the file
            state_dict, removed = strip_wrappers(_all_weights(found))
            keys = ", ".join(repr(k) for k in [found.key, *found.others])
            notes = [f"weights from the entries {keys} of the checkpoint, each named by its key"]
        notes += [f"key prefix {p!r} removed (a training wrapper adds it)" for p in removed]
        return _inferred(state_dict, path, checkpoint_kind, notes, options, unread)
    notes += [f"key prefix {p!r} removed (a training wrapper adds it)" for p in removed]
    module, class_notes = _with_class(state_dict, original, spec, saved_kwargs, options)
    return LoadedModel(module, checkpoint_kind, str(path), notes + class_notes)


def _all_weights(found: Found) -> dict[str, Tensor]:
    """Every state dict in the checkpoint, each under its key as a prefix."""
    merged = {f"{found.key}.{k}": v for k, v in tensors_only(found.model).items()}
    for key, value in found.others.items():
        if isinstance(value, Mapping):
            merged |= {f"{key}.{k}": v for k, v in tensors_only(value).items()}
    return merged
