"""Checkpoints spread over several files: sharded safetensors, and which checkpoint a folder holds.

A sharded safetensors checkpoint is an index, ``model.safetensors.index.json`` (Hugging Face's
format: ``{"metadata": {...}, "weight_map": {tensor name: shard file}}``), beside shards named
``model-00001-of-00003.safetensors``; a folder of such shards without the index is read too.
:class:`ShardedSafetensors` maps each tensor name to its tensor without reading any: a tensor
is read, memory-mapped, from its own shard when asked for, so a caller that needs a few tensors
opens only the shards holding them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import Tensor

from gradscope.errors import GradscopeError, first_line
from gradscope.loading import files
from gradscope.loading.distributed import is_distributed_checkpoint

#: The index file name Hugging Face writes beside the shards of ``model.safetensors``.
INDEX_NAME = "model.safetensors.index.json"
INDEX_SUFFIX = ".safetensors.index.json"
#: ``model-00001-of-00003.safetensors``: shard 1 of 3 of ``model``.
SHARD_NAME = re.compile(r"^(?P<stem>.+)-(?P<number>\d+)-of-(?P<total>\d+)\.safetensors$")
#: File names that hold a whole checkpoint, named when a folder holds nothing else readable.
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pt2", ".safetensors")
WHAT_A_FOLDER_MAY_HOLD = (
    f"{INDEX_NAME} with its shards, *.safetensors files (one, or shards NAME-0000N-of-0000M), "
    "or a torch.distributed.checkpoint (.metadata and .distcp files)"
)


class ShardedSafetensors(Mapping[str, Tensor]):
    """The tensors of a sharded safetensors checkpoint, each read from its shard when asked for.

    Names come sorted, as a single safetensors file lists them. ``keys()``, ``len()`` and
    ``in`` use the weight map alone; ``[name]`` opens the one shard holding the tensor;
    :meth:`read` reads many at once, opening each shard they lie in once.
    """

    def __init__(
        self,
        source: Path,
        weight_map: Mapping[str, Path],
        index_metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.source = source
        self._weight_map = dict(sorted(weight_map.items()))  # in a single file's order
        self._index_metadata = dict(index_metadata or {})

    def __getitem__(self, name: str) -> Tensor:
        return self.read([name])[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._weight_map)

    def __len__(self) -> int:
        return len(self._weight_map)

    def __contains__(self, name: object) -> bool:
        return name in self._weight_map

    @property
    def shards(self) -> list[Path]:
        """Every shard file the weight map names, in the order first named."""
        return list(dict.fromkeys(self._weight_map.values()))

    def shard_of(self, name: str) -> Path:
        """The shard file that holds the tensor ``name``."""
        return self._weight_map[name]

    def read(self, names: Iterable[str] | None = None) -> dict[str, Tensor]:
        """The tensors named (all when None), on the CPU; each shard they lie in opened once."""
        wanted = list(self._weight_map if names is None else names)
        by_shard: dict[Path, list[str]] = {}
        for name in wanted:
            if name not in self._weight_map:
                raise KeyError(name)
            by_shard.setdefault(self._weight_map[name], []).append(name)
        tensors: dict[str, Tensor] = {}
        for shard, shard_names in by_shard.items():
            with self._open(shard) as file:
                held = set(file.keys())
                for name in shard_names:
                    if name not in held:
                        raise GradscopeError(
                            f"{self.source} says {name!r} is in {shard.name}, but that shard "
                            "does not hold it: the index and the shards are from different "
                            "saves; copy the index with its own shards"
                        )
                    tensors[name] = file.get_tensor(name)
        return {name: tensors[name] for name in wanted}

    def sizes(self, names: Iterable[str]) -> dict[str, int]:
        """How many elements each tensor named holds, from the shards' headers alone."""
        return {name: math.prod(shape) for name, shape in self.shapes(names).items()}

    def shapes(self, names: Iterable[str] | None = None) -> dict[str, tuple[int, ...]]:
        """The shape of each tensor named (all when None), from the shards' headers alone."""
        by_shard: dict[Path, list[str]] = {}
        for name in self._weight_map if names is None else names:
            by_shard.setdefault(self._weight_map[name], []).append(name)
        shapes: dict[str, tuple[int, ...]] = {}
        for shard, shard_names in by_shard.items():
            with self._open(shard) as file:
                for name in shard_names:
                    shapes[name] = tuple(file.get_slice(name).get_shape())
        return shapes

    def metadata(self) -> dict[str, str]:
        """The shards' ``__metadata__`` merged (the first shard naming a key wins), then the
        index's own string metadata: read as a single file's metadata is."""
        merged: dict[str, str] = {}
        for shard in self.shards:
            with self._open(shard) as file:
                for key, value in (file.metadata() or {}).items():
                    merged.setdefault(key, value)
        for key, value in self._index_metadata.items():
            if isinstance(value, str):
                merged.setdefault(key, value)
        return merged

    def _missing(self) -> list[str]:
        return [shard.name for shard in self.shards if not shard.is_file()]

    @contextmanager
    def _open(self, shard: Path) -> Iterator[Any]:
        if not shard.is_file():
            missing = ", ".join(self._missing())
            raise GradscopeError(
                f"{self.source} names shards that are not there: {missing}; copy every shard "
                "into the folder beside the index"
            )
        with open_shard(shard, self.source) as file:
            yield file


@contextmanager
def open_shard(shard: Path, source: Path) -> Iterator[Any]:
    """``safe_open`` of one shard of ``source``, memory-mapped; a file in another format or
    a damaged one is a one-line error."""
    from safetensors import SafetensorError, safe_open

    _check_safetensors(shard, source)
    try:
        opened = safe_open(str(shard), framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise _damaged(shard, source, error) from None
    with opened as file:
        try:
            yield file
        except SafetensorError as error:  # a tensor's bytes lie past the end of the file
            raise _damaged(shard, source, error) from None


def _damaged(shard: Path, source: Path, error: Exception) -> GradscopeError:
    return GradscopeError(
        f"{shard} (a shard of {source}) is not a readable safetensors file "
        f"({first_line(error)}); it may be truncated: copy or save it again"
    )


def _check_safetensors(shard: Path, source: Path) -> None:
    """Refuse a shard that is some other format (``pytorch_model-00001-of-00002.bin``)."""
    kind = files.sniff(shard) if shard.stat().st_size else "empty"
    if kind == files.SAFETENSORS:
        return
    what = {files.TORCH: "a torch.save file", files.LEGACY: "a torch.save file"}
    raise GradscopeError(
        f"{shard} (a shard of {source}) is {what.get(kind, 'not a safetensors file')}: gradscope "
        "reads sharded checkpoints only as safetensors; save the shards with safetensors "
        "(safetensors.torch.save_file), or the model as one file with torch.save"
    )


def _shard_path(folder: Path, name: object, index: Path) -> Path:
    """A shard the index names, as a file beside the index (never outside its folder)."""
    if not isinstance(name, str) or not name:
        raise _not_an_index(index, "a shard name that is not a file name")
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise GradscopeError(
            f"{index} names the shard {name!r}, outside the index's folder; gradscope reads "
            "only shards beside the index: copy them there and name them by file name"
        )
    return folder / relative


def _not_an_index(index: Path, why: str) -> GradscopeError:
    return GradscopeError(
        f"{index} is not a safetensors index ({why}); give the {INDEX_NAME} saved with the "
        "shards, or the folder holding them"
    )


def read_index(index: Path) -> ShardedSafetensors:
    """The lazy tensors of the shards an index file (``*.safetensors.index.json``) names."""
    try:
        content = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _not_an_index(index, first_line(error)) from None
    weight_map = content.get("weight_map") if isinstance(content, dict) else None
    if not isinstance(weight_map, dict):
        raise _not_an_index(index, 'no "weight_map" of tensor names to shard files')
    if not weight_map:
        raise _not_an_index(index, "its weight_map names no tensors")
    metadata = content.get("metadata")
    paths = {
        str(name): _shard_path(index.parent, shard, index) for name, shard in weight_map.items()
    }
    return ShardedSafetensors(index, paths, metadata if isinstance(metadata, dict) else None)


def _shard_sets(folder: Path) -> dict[tuple[str, int], dict[int, Path]]:
    """The folder's ``STEM-0000N-of-0000M.safetensors`` files by (STEM, M), then N."""
    sets: dict[tuple[str, int], dict[int, Path]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        match = SHARD_NAME.match(path.name)
        if match:
            key = (match["stem"], int(match["total"]))
            sets.setdefault(key, {})[int(match["number"])] = path
    return sets


def read_shard_folder(folder: Path) -> ShardedSafetensors:
    """The lazy tensors of a folder of shards ``STEM-0000N-of-0000M.safetensors`` without an
    index: the weight map is built from each shard's header (no tensor data is read)."""
    sets = _shard_sets(folder)
    if len(sets) != 1:
        stems = ", ".join(f"{stem}-*-of-{total:05d}" for stem, total in sets) or "none"
        raise GradscopeError(
            f"{folder} holds {len(sets)} sets of safetensors shards ({stems}) and no index; "
            "put each set in its own folder, or give its index file"
        )
    (stem, total), numbered = next(iter(sets.items()))
    missing = [n for n in range(1, total + 1) if n not in numbered]
    if missing:
        width = len(next(iter(numbered.values())).name.rsplit("-of-", 1)[1]) - len(".safetensors")
        names = ", ".join(f"{stem}-{n:0{width}d}-of-{total:0{width}d}.safetensors" for n in missing)
        raise GradscopeError(
            f"{folder} lacks shards of {stem}: {names}; copy every shard into the folder"
        )
    weight_map: dict[str, Path] = {}
    for number in sorted(numbered):
        shard = numbered[number]
        with open_shard(shard, folder) as file:
            for name in file.keys():  # noqa: SIM118 - safe_open has no __iter__
                if name in weight_map:
                    raise GradscopeError(
                        f"{folder}: the tensor {name!r} is in both {weight_map[name].name} and "
                        f"{shard.name}; the folder mixes shards of different saves"
                    )
                weight_map[name] = shard
    return ShardedSafetensors(folder, weight_map)


def open_sharded(path: Path) -> ShardedSafetensors:
    """The lazy tensors of a sharded safetensors checkpoint: an index file, or a folder holding
    an index or the shards alone."""
    if path.is_dir():
        indexes = _indexes(path)
        return read_index(indexes[0]) if len(indexes) == 1 else read_shard_folder(path)
    return read_index(path)


def _indexes(folder: Path) -> list[Path]:
    """The safetensors index files in ``folder``; the standard name alone when it is there."""
    if (folder / INDEX_NAME).is_file():
        return [folder / INDEX_NAME]
    return sorted(p for p in folder.glob(f"*{INDEX_SUFFIX}") if p.is_file())


def checkpoint_in(folder: Path) -> tuple[str, Path]:
    """The checkpoint a folder holds: its format (a :mod:`~gradscope.loading.files` kind) and
    the path to read it from (the index, the single file, or the folder itself)."""
    indexes = _indexes(folder)
    if len(indexes) > 1:
        names = ", ".join(p.name for p in indexes)
        raise GradscopeError(
            f"{folder} holds several safetensors indexes ({names}); give the one to analyse"
        )
    if indexes:
        return files.SHARDED, indexes[0]
    if is_distributed_checkpoint(folder):
        return files.DISTRIBUTED, folder
    if any(folder.glob("*.distcp")):
        raise GradscopeError(
            f"{folder} holds .distcp files but no .metadata: the torch.distributed.checkpoint "
            "is incomplete; copy its .metadata file too (saved by the coordinating rank)"
        )
    if _shard_sets(folder):
        return files.SHARDED, folder
    single = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    if len(single) == 1:
        return files.SAFETENSORS, single[0]
    if single:
        names = ", ".join(p.name for p in single[:4])
        raise GradscopeError(
            f"{folder} holds several safetensors files ({names}) and no index saying which "
            f"shards belong together; give one of the files, or the folder's {INDEX_NAME}"
        )
    raise _nothing_readable(folder)


def _nothing_readable(folder: Path) -> GradscopeError:
    found = sorted(p.name for p in folder.iterdir() if p.suffix in CHECKPOINT_SUFFIXES)
    if found:
        names = ", ".join(found[:3])
        return GradscopeError(
            f"{folder} is a directory; give the checkpoint file inside it ({names})"
        )
    return GradscopeError(
        f"{folder} is a directory with nothing gradscope reads: it reads {WHAT_A_FOLDER_MAY_HOLD}"
        "; give a checkpoint file, or such a directory"
    )
