"""torch.distributed.checkpoint (DCP) folders: a ``.metadata`` file beside ``__R_N.distcp`` data.

Read in this process, on the CPU, without a process group: each tensor the metadata lists is
allocated at its full size and ``torch.distributed.checkpoint.load`` fills it, gathering the
chunks every rank saved. Entries that are not tensors (optimizer settings, counters) are never
read: DCP stores them as pickles, which torch loads with ``weights_only=False``. The tensor data
is read with ``torch.load(weights_only=True)``, but torch reads ``.metadata`` itself with a plain
``pickle.load`` (``FileSystemReader.read_metadata``), which can run code: a DCP folder is read
only with ``--trust``. ``torch.distributed.checkpoint`` is imported only when such a folder is met.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gradscope.errors import GradscopeError, first_line
from gradscope.loading import files

METADATA_FILE = ".metadata"


def is_distributed_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` holds a torch.distributed.checkpoint (its ``.metadata`` file)."""
    return (folder / METADATA_FILE).is_file()


def _refused(folder: Path) -> GradscopeError:
    return GradscopeError(
        f"{folder} is a torch.distributed.checkpoint: torch reads its {METADATA_FILE} file with "
        "a plain pickle.load, which can run code; pass --trust to read it (only for "
        "checkpoints you trust), or save the weights as safetensors"
    )


def _metadata(folder: Path, trust: bool) -> Any:
    """The checkpoint's ``Metadata`` (unpickled by torch: only with ``trust``)."""
    if not trust:
        raise _refused(folder)
    from torch.distributed.checkpoint import FileSystemReader

    try:
        return FileSystemReader(str(folder)).read_metadata()
    except Exception as error:
        raise GradscopeError(
            f"{folder / METADATA_FILE} is not a readable torch.distributed.checkpoint metadata "
            f"file ({type(error).__name__}: {first_line(error)}); copy or save the checkpoint "
            "again"
        ) from None


def _tensor_entries(metadata: Any) -> dict[str, Any]:
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    return {
        name: entry
        for name, entry in metadata.state_dict_metadata.items()
        if isinstance(entry, TensorStorageMetadata)
    }


def distributed_tensor_names(folder: Path, trust: bool) -> list[str]:
    """The names (flattened, as saved: ``model.lstm.weight_ih_l0``) of the checkpoint's tensors,
    from its metadata alone."""
    return list(_tensor_entries(_metadata(folder, trust)))


def _load(folder: Path, trust: bool, names: Iterable[str] | None) -> tuple[dict[str, Tensor], Any]:
    metadata = _metadata(folder, trust)
    entries = _tensor_entries(metadata)
    wanted = list(entries if names is None else names)
    unknown = [name for name in wanted if name not in entries]
    if unknown:
        raise KeyError(unknown[0])
    tensors = {
        name: torch.empty(entries[name].size, dtype=entries[name].properties.dtype)
        for name in wanted
    }
    if not tensors:
        return tensors, metadata
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    reader = dcp.FileSystemReader(str(folder))
    try:
        with files.quiet():  # "torch.distributed is disabled ...": one process is the intent
            dcp.load(tensors, storage_reader=reader, no_dist=True)
    except (Exception, CheckpointException) as error:  # CheckpointException: a BaseException
        cause = _first_failure(error)
        raise GradscopeError(
            f"{folder}: cannot read the tensors of the torch.distributed.checkpoint "
            f"({type(cause).__name__}: {first_line(cause)}); a .distcp file is missing or "
            "damaged: copy the whole folder again"
        ) from None
    return tensors, metadata


def _first_failure(error: BaseException) -> BaseException:
    """The exception a rank raised, from the CheckpointException that gathers them."""
    failures = getattr(error, "failures", None)
    if isinstance(failures, Mapping) and failures:
        failure = next(iter(failures.values()))
        if isinstance(failure, tuple) and failure and isinstance(failure[0], BaseException):
            return failure[0]
    return error


def read_distributed(
    folder: Path, trust: bool, names: Iterable[str] | None = None
) -> dict[str, Tensor]:
    """The checkpoint's tensors (only those ``names`` lists, when given) on the CPU, by their
    flattened names; a name that is not a tensor of the checkpoint raises KeyError."""
    return _load(folder, trust, names)[0]


def read_distributed_nested(
    folder: Path, trust: bool, select: Callable[[str], bool] | None = None
) -> tuple[dict[Any, Any], dict[str, int]]:
    """Every tensor of the checkpoint, nested as the saved state dict was (``{"model": {...},
    "optim": {...}}``), so its weights are found as in a ``torch.save`` file; and ``{}``.

    With ``select``: only the model's tensors whose names (below the top-level key they are
    saved under, if any) it keeps, none of an optimizer's; and the size of each model tensor
    left unread, by that name."""
    metadata = _metadata(folder, trust)
    entries = _tensor_entries(metadata)
    paths = getattr(metadata, "planner_data", None)
    if select is None:
        tensors, _ = _load(folder, trust, list(entries))
        return _nested(tensors, paths), {}
    paths = paths if isinstance(paths, Mapping) else {}

    def key_path(name: str) -> tuple:
        path = paths.get(name)
        return path if isinstance(path, tuple) and path else (name,)

    def inner(name: str) -> str:
        path = key_path(name)
        return ".".join(str(part) for part in path[1:]) if len(path) > 1 else name

    model = [
        name
        for name in entries
        if len(key_path(name)) == 1 or "optim" not in str(key_path(name)[0]).lower()
    ]
    names = [name for name in model if select(inner(name))]
    if not names:
        raise GradscopeError(
            f"--only selects none of the tensors in {folder} (for example "
            f"{', '.join(inner(name) for name in model[:4])}): give a module path or a glob "
            "such as 'encoder.*'"
        )
    tensors, metadata = _load(folder, trust, names)
    unread = {inner(name): math.prod(entries[name].size) for name in model if name not in tensors}
    return _nested(tensors, getattr(metadata, "planner_data", None)), unread


def _nested(flat: Mapping[str, Tensor], planner_data: object) -> dict[Any, Any]:
    """``flat`` under the key paths DCP's planner recorded when it flattened the state dict;
    ``flat`` unchanged when the paths are missing or do not nest."""
    if not isinstance(planner_data, Mapping):
        return dict(flat)
    nested: dict[Any, Any] = {}
    for name, tensor in flat.items():
        path = planner_data.get(name, (name,))
        if not isinstance(path, tuple) or not path:
            return dict(flat)
        node = nested
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                return dict(flat)
        if path[-1] in node:
            return dict(flat)
        node[path[-1]] = tensor
    return nested
