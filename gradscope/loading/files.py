"""Checkpoint files: which format a file is in, and reading it without running its code.

``torch.save`` files are unpickled with ``weights_only=True``. Allowed beyond PyTorch's defaults:
PyTorch's own ``torch.nn`` classes, plain-data classes that training scripts often save beside
the weights (``argparse.Namespace``, NumPy scalars and arrays, Lightning's ``AttributeDict``,
read as a plain dict without importing Lightning), and exactly the classes the user names with
``--allow-global``. Any other global means the file is code: it is refused unless ``--trust``.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import sys
import traceback
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from gradscope.errors import GradscopeError, first_line

#: File formats gradscope tells apart by their bytes.
TORCH, TORCHSCRIPT, EXPORTED, SAFETENSORS, LEGACY, UNKNOWN = (
    "torch.save",
    "torchscript",
    "exported-program",
    "safetensors",
    "torch.save (legacy)",
    "unknown",
)
#: Checkpoints in several files: an index of safetensors shards (or a folder of shards), and a
#: torch.distributed.checkpoint folder (see :mod:`~gradscope.loading.shards`).
SHARDED, DISTRIBUTED = "sharded safetensors", "torch.distributed.checkpoint"
#: The largest JSON file read to see whether it is a safetensors index.
INDEX_LIMIT = 256 * 2**20

READABLE = (
    "gradscope reads torch.save, safetensors, TorchScript and torch.export (.pt2) files, and "
    "folders of sharded safetensors or a torch.distributed.checkpoint"
)

#: Plain-data globals that many checkpoints carry beside the weights; loading them runs no code.
DATA_GLOBALS = (
    "argparse.Namespace",
    "numpy.ndarray",
    "numpy.dtype",
    "numpy.core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray._reconstruct",
    "numpy._core.multiarray.scalar",
)
#: Pure activation functions that PyTorch's own modules hold as attributes (a whole
#: ``nn.TransformerEncoderLayer`` keeps ``activation=F.relu``): they compute, and read, write,
#: import or execute nothing. An explicit list; nothing else of ``torch`` is allowed this way.
PURE_FUNCTIONS = frozenset(
    [
        *(
            f"torch.nn.functional.{name}"
            for name in (
                "relu",
                "relu6",
                "gelu",
                "silu",
                "mish",
                "elu",
                "selu",
                "celu",
                "leaky_relu",
                "softplus",
                "softsign",
                "hardswish",
                "hardsigmoid",
                "hardtanh",
                "tanh",
                "sigmoid",
                "glu",
                "tanhshrink",
                "logsigmoid",
            )
        ),
        "torch._C._nn.gelu",
        "torch._C._nn.silu",
        "torch._C._nn.elu",
        "torch._C._nn.leaky_relu",
        "torch._C._nn.hardswish",
        "torch._C._nn.hardsigmoid",
        "torch._C._nn.softplus",
        "torch._C._nn.glu",
        "torch._C._nn.log_sigmoid",
        "torch.relu",
        "torch.tanh",
        "torch.sigmoid",
    ]
)
#: numpy.dtypes.Float64DType and friends: the dtype classes of NumPy 1.25+.
NUMPY_DTYPE_CLASS = re.compile(r"^numpy\.dtypes\.\w+DType$")
#: Lightning's hyper-parameter dict, read as a plain dict (Lightning need not be installed).
ATTRIBUTE_DICTS = (
    "lightning.fabric.utilities.data.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
    "pytorch_lightning.utilities.parsing.AttributeDict",
)


class PlainDict:
    """Stand-in for a dict subclass in a checkpoint: unpickles to a plain ``dict``."""

    def __new__(cls, *args: Any, **kwargs: Any) -> dict:
        return {}


def sniff(path: Path) -> str:
    """The format of a checkpoint file, from its bytes (not its name)."""
    with open(path, "rb") as file:
        head = file.read(16)
    if head.startswith(b"PK\x03\x04"):
        try:
            names = zipfile.ZipFile(path).namelist()
        except (zipfile.BadZipFile, OSError, EOFError):
            raise GradscopeError(
                f"{path} is a damaged zip archive (truncated or corrupt); save or copy the "
                "checkpoint again"
            ) from None
        inner = {name.split("/", 1)[-1] for name in names}
        if "constants.pkl" in inner or any(name.startswith("code/") for name in inner):
            return TORCHSCRIPT
        if "archive_format" in inner or any(name.startswith("models/") for name in inner):
            return EXPORTED
        if "data.pkl" in inner:
            return TORCH
        raise GradscopeError(
            f"{path} is a zip archive with no PyTorch checkpoint in it (damaged, or another kind "
            f"of file); {READABLE}"
        )
    if _is_safetensors(path, head):
        return SAFETENSORS
    if head.lstrip()[:1] == b"{" and _is_safetensors_index(path):
        return SHARDED
    if head[:1] == b"\x80":
        return LEGACY
    return UNKNOWN


def _is_safetensors(path: Path, head: bytes) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON object."""
    if len(head) < 9 or head[8:9] != b"{":
        return False
    header = int.from_bytes(head[:8], "little")
    return 2 <= header <= path.stat().st_size - 8


def _is_safetensors_index(path: Path) -> bool:
    """A JSON object with a ``weight_map`` (``model.safetensors.index.json``)."""
    if path.stat().st_size > INDEX_LIMIT:
        return False
    try:
        content = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(content, dict) and "weight_map" in content


def check_file(path: Path) -> None:
    """Refuse what is not a readable file, with what to do instead."""
    if not path.exists():
        raise GradscopeError(f"{path}: no such file; give the path of a checkpoint (.pt, .pth)")
    if path.is_dir():
        raise GradscopeError(f"{path} is a directory; give the checkpoint file inside it")
    if path.stat().st_size == 0:
        raise GradscopeError(f"{path} is empty; save the model again with torch.save")


def unknown_format(path: Path) -> GradscopeError:
    """The error for bytes that no supported format starts with."""
    with open(path, "rb") as file:
        head = file.read(512)
    try:
        head.decode("utf-8")
        what = "a text file"
    except UnicodeDecodeError:
        what = "not a format gradscope knows"
    return GradscopeError(f"{path} is {what}, not a PyTorch checkpoint; {READABLE}")


@contextmanager
def quiet() -> Iterator[None]:
    """torch.load warns on stderr about odd files; gradscope says what matters in one line."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def importable_from_cwd() -> None:
    """Let the user's own packages import, as ``python -m`` would from this folder."""
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))


def _resolve(name: str) -> Any:
    """The object a pickle global names (``package.module.Qual.Name``), or None."""
    parts = name.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        try:
            for attr in parts[split:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def _torch_nn_class(name: str) -> type | None:
    """The class a global names, if it is one of PyTorch's own ``torch.nn`` classes."""
    if not name.startswith("torch.nn."):
        return None
    obj = _resolve(name)
    if inspect.isclass(obj) and issubclass(obj, (nn.Module, nn.Parameter)):
        return obj
    return None


def global_name(spec: str) -> str:
    """``pkg.mod:Class`` or ``pkg.mod.Class`` as the dotted name pickles use."""
    return spec.replace(":", ".")


#: Modules whose classes run code when called: never suggested, never allowed by name.
CODE_MODULES = frozenset(
    [
        "builtins",
        "os",
        "posix",
        "nt",
        "subprocess",
        "sys",
        "shutil",
        "socket",
        "importlib",
        "functools",
        "operator",
        "pickle",
        "runpy",
        "code",
        "codeop",
        "types",
        "ctypes",
        "multiprocessing",
        "threading",
        "asyncio",
        "pty",
        "webbrowser",
    ]
)


def _is_code_module(name: str) -> bool:
    return name.split(".")[0] in CODE_MODULES or name.startswith("torch._")


def _looks_like_data_class(name: str) -> bool:
    """Worth suggesting for ``--allow-global``: a class name, outside modules that run code."""
    module, _, attr = name.rpartition(".")
    return attr[:1].isupper() and not _is_code_module(module)


def _user_global(spec: str) -> Any:
    name = global_name(spec)
    if _is_code_module(name.rpartition(".")[0]):
        raise GradscopeError(
            f"--allow-global {spec}: {name.rpartition('.')[0]} is code, not data; only --trust "
            "loads a file that needs it"
        )
    importable_from_cwd()
    obj = _resolve(name)
    if obj is None:
        raise GradscopeError(
            f"--allow-global {spec}: cannot import it here; write package.module:Class as the "
            "refusal message names it, and run where that package is importable"
        )
    if not inspect.isclass(obj):
        raise GradscopeError(
            f"--allow-global {spec} is a {type(obj).__name__}, not a class: calling it runs "
            "code; only --trust loads a file that needs it"
        )
    return obj


def _safe_global(name: str, allowed: dict[str, str]) -> Any:
    """What a weights-only load may use for ``name``, or None when the global is code."""
    if name in allowed:
        return (_user_global(allowed[name]), name)
    if name in ATTRIBUTE_DICTS:
        return (PlainDict, name)
    if name in DATA_GLOBALS or name in PURE_FUNCTIONS or NUMPY_DTYPE_CLASS.match(name):
        obj = _resolve(name)
        return None if obj is None else (obj, name)
    cls = _torch_nn_class(name)
    return None if cls is None else (cls, name)


def _numpy_dtype_classes() -> list[type]:
    """The classes of NumPy's dtype instances, which a pickled ``numpy.dtype`` builds."""
    import numpy

    dtypes = getattr(numpy, "dtypes", None)
    if dtypes is None:
        return []
    return [obj for name, obj in vars(dtypes).items() if name.endswith("DType")]


def _from_script(path: Path, names: list[str]) -> GradscopeError:
    """The file was pickled by a script run as ``python train.py``: its classes are
    ``__main__.Net``, which only that script's module can give."""
    classes = [name.removeprefix("__main__.") for name in names if name.startswith("__main__.")]
    return GradscopeError(
        f"{path} was pickled by a script run directly: it needs the script's classes "
        f"{', '.join(classes)} (as __main__.{classes[0]}); pass --trust --model "
        f"path/to/script.py:{classes[0]} so gradscope reads them from that file (only for "
        "files you trust), or save model.state_dict()"
    )


@contextmanager
def main_classes(module: ModuleType | None) -> Iterator[None]:
    """While unpickling, ``__main__.X`` finds the class ``X`` of ``module`` (the script the
    model was saved from); nothing changes without one."""
    if module is None:
        yield
        return
    import __main__

    added = [
        name
        for name, obj in vars(module).items()
        if inspect.isclass(obj) and not hasattr(__main__, name)
    ]
    for name in added:
        setattr(__main__, name, getattr(module, name))
    try:
        yield
    finally:
        for name in added:
            delattr(__main__, name)


def _refuse_code(path: Path, names: list[str], unused: list[str] = ()) -> GradscopeError:
    if any(name.startswith("__main__.") for name in names):
        return _from_script(path, names)
    listed = ", ".join(names)
    ignored = f" (--allow-global {', '.join(unused)}: not needed by the file)" if unused else ""
    if all(_looks_like_data_class(name) for name in names):
        flags = " ".join(f"--allow-global {name}" for name in names)
        way = f"if these are plain classes you trust, pass {flags}; or pass --trust"
    else:
        way = "pass --trust"
    return GradscopeError(
        f"{path} is code, not just weights: it needs {listed}{ignored}; {way} to load the file "
        "as code (only for files you trust); or save model.state_dict()"
    )


def _raised_by_own_code(error: BaseException) -> bool:
    """Whether the innermost frame of ``error`` lies outside PyTorch and the standard library:
    the model's own code (run by unpickling it) raised it, not a damaged file."""
    import sysconfig

    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return False
    where = Path(frames[-1].filename).resolve()
    ours = [Path(torch.__file__).parent, Path(__file__).parents[1]]
    ours.append(Path(sysconfig.get_paths()["stdlib"]).resolve())
    return not any(where.is_relative_to(root.resolve()) for root in ours)


def _failed_to_load(path: Path, error: Exception) -> GradscopeError:
    """Loading as code failed: in the model's own code, or because the file is damaged (a
    class that could not be found, said as it was, is neither)."""
    if isinstance(error, GradscopeError):
        return error
    if not _raised_by_own_code(error):
        return _not_a_checkpoint(path, error)
    return GradscopeError(
        f"{path}: the model's own code raised {type(error).__name__} while it was being loaded "
        f"({first_line(error)}); check that the code it imports is the version the file was "
        "saved with, or save model.state_dict() and pass --model"
    )


def _not_a_checkpoint(path: Path, error: Exception) -> GradscopeError:
    reason = first_line(error).split(". ")[0]
    reason = f"{type(error).__name__}: {reason}" if reason else type(error).__name__
    return GradscopeError(
        f"{path} is not a readable PyTorch checkpoint ({reason}); it may be truncated or "
        f"corrupt; {READABLE}"
    )


def script_classes(path: Path) -> list[str]:
    """The ``__main__.X`` classes a file pickled by a script run directly needs, and the
    running program's ``__main__`` lacks (a script that saves and analyses has them)."""
    import __main__

    needed = _needed_globals(path, sniff(path) == LEGACY)
    return [
        name
        for name in needed
        if name.startswith("__main__.") and not hasattr(__main__, name.removeprefix("__main__."))
    ]


def _needed_globals(path: Path, legacy: bool) -> list[str]:
    """Globals the file needs beyond the weights-only defaults (zip checkpoints only)."""
    if legacy:
        return []
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as error:
        raise _not_a_checkpoint(path, error) from None


def read_pickle(
    path: Path,
    trust: bool,
    allow_globals: tuple[str, ...] = (),
    script: Callable[[], ModuleType] | None = None,
) -> object:
    """Unpickle a ``torch.save`` file: weights-only with safe globals, or as code (``--trust``).

    ``script`` gives the module a file pickled by a script run directly takes its
    ``__main__`` classes from (``--model path/to/script.py:Class``).
    """
    legacy = sniff(path) == LEGACY
    if trust:
        importable_from_cwd()
        from_main = script_classes(path)
        if from_main and script is None:
            raise _from_script(path, from_main)
        try:
            with quiet(), main_classes(script() if from_main and script else None):
                return torch.load(path, map_location="cpu", weights_only=False)
        except (AttributeError, ModuleNotFoundError, ImportError) as error:
            raise GradscopeError(
                f"{path} needs code that cannot be imported here ({first_line(error)}); run "
                "gradscope where the model's code is importable, or save a state_dict and pass "
                "--model"
            ) from None
        except Exception as error:
            raise _failed_to_load(path, error) from None
    allowed = {global_name(spec): spec for spec in allow_globals}
    needed = _needed_globals(path, legacy)
    safe = {name: _safe_global(name, allowed) for name in needed}
    refused = [name for name, obj in safe.items() if obj is None]
    if refused:
        raise _refuse_code(
            path, refused, [spec for name, spec in allowed.items() if name not in safe]
        )
    extra = _numpy_dtype_classes() if "numpy.dtype" in safe else []
    try:
        with quiet(), torch.serialization.safe_globals([*safe.values(), *extra]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        found = list(dict.fromkeys(re.findall(r"GLOBAL ([\w.]+)", str(error))))
        if found and all(_torch_nn_class(name) for name in found):
            raise GradscopeError(
                f"{path} is a whole module in PyTorch's old (non-zip) format, which cannot be read "
                "weights-only; pass --trust if you trust the file, or re-save it with torch.save"
            ) from None
        if found:
            raise _refuse_code(path, found) from None
        raise _not_a_checkpoint(path, error) from None


def read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors of a safetensors file (on the CPU) and its string metadata."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            metadata = dict(file.metadata() or {})
            tensors = {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as error:
        raise GradscopeError(
            f"{path} is not a readable safetensors file ({first_line(error)}); it may be "
            "truncated: save it again with safetensors.torch.save_file"
        ) from None
    return tensors, metadata
