"""Loading a model: a checkpoint file or an object in, a module plus what we know of it out.

Safe by default: files are read with ``weights_only=True``. PyTorch's own ``torch.nn`` module
classes are allow-listed for that load; any other global means the file is code, and it is
refused unless the user passes ``--trust``. gradscope never falls back to an unsafe load.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import inspect
import json
import re
import sys
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gradscope.errors import GradscopeError, first_line


@dataclass
class LoadedModel:
    """A model ready to probe, and how it was obtained."""

    module: nn.Module
    format: str
    path: str | None
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """The report's ``model`` object."""
        return {
            "path": self.path,
            "format": self.format,
            "class": type(self.module).__qualname__,
            "parameters": sum(p.numel() for p in self.module.parameters()),
            "notes": self.notes,
        }


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:1``, ``mps`` or ``auto`` (the first available accelerator)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise GradscopeError(
            f"--device {name!r} is not a device: use cpu, cuda, mps or auto"
        ) from None
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
    }
    if not available.get(device.type, False):
        raise GradscopeError(f"--device {name}: no such device on this machine; use --device cpu")
    return device


def _is_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def _torch_nn_class(name: str) -> type | None:
    """The class a global names, if it is one of PyTorch's own ``torch.nn`` classes."""
    if not name.startswith("torch.nn."):
        return None
    module_name, _, attr = name.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        return None
    if inspect.isclass(obj) and issubclass(obj, (nn.Module, nn.Parameter)):
        return obj
    return None


def _unsafe_globals(path: Path) -> list[str]:
    """Globals the file needs beyond the weights-only defaults (zip checkpoints)."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        return []


def _refuse_code(path: Path, names: list[str]) -> GradscopeError:
    listed = ", ".join(names)
    return GradscopeError(
        f"{path} is code, not just weights: it needs {listed}; pass --trust to load it as code "
        "(only for files you trust), or save model.state_dict() and pass --model"
    )


def _not_a_checkpoint(path: Path, error: Exception) -> GradscopeError:
    reason = first_line(error).split(". ")[0]
    reason = f"{type(error).__name__}: {reason}" if reason else type(error).__name__
    return GradscopeError(
        f"{path} is not a readable PyTorch checkpoint ({reason}); gradscope reads files "
        "written by torch.save"
    )


@contextmanager
def _no_warnings() -> Iterator[None]:
    """torch.load warns on stderr about odd files; gradscope says what matters in one line."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _importable_from_cwd() -> None:
    """Let the user's own packages import, as ``python -m`` would from this folder."""
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))


def read_checkpoint(path: Path, trust: bool) -> object:
    """Unpickle a checkpoint: weights-only with torch.nn classes allowed, or as code (--trust)."""
    if not path.exists():
        raise GradscopeError(f"{path}: no such file; give the path of a checkpoint (.pt, .pth)")
    if path.is_dir():
        raise GradscopeError(f"{path} is a directory; give the checkpoint file inside it")
    if path.stat().st_size == 0:
        raise GradscopeError(f"{path} is empty; save the model again with torch.save")
    if trust:
        _importable_from_cwd()
        try:
            with _no_warnings():
                return torch.load(path, map_location="cpu", weights_only=False)
        except (AttributeError, ModuleNotFoundError, ImportError) as error:
            raise GradscopeError(
                f"{path} needs code that cannot be imported here ({first_line(error)}); run "
                "gradscope where the model's code is importable, or save a state_dict and pass "
                "--model"
            ) from None
        except Exception as error:
            raise _not_a_checkpoint(path, error) from None
    needed = _unsafe_globals(path)
    allowed = {name: _torch_nn_class(name) for name in needed}
    refused = [name for name, cls in allowed.items() if cls is None]
    if refused:
        raise _refuse_code(path, refused)
    try:
        safe = [cls for cls in allowed.values() if cls]
        with _no_warnings(), torch.serialization.safe_globals(safe):
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


def import_class(spec: str) -> type:
    """The class named by ``package.module:Class`` or ``path/to/file.py:Class``."""
    target, _, class_name = spec.rpartition(":")
    if not target or not class_name:
        raise GradscopeError(
            f"--model {spec!r}: write package.module:Class or path/to/file.py:Class"
        )
    try:
        if target.endswith(".py") or "/" in target or "\\" in target:
            file = Path(target)
            if not file.is_file():
                raise GradscopeError(f"--model {spec!r}: no such file {file}")
            sys.path.insert(0, str(file.resolve().parent))
            module_spec = importlib.util.spec_from_file_location(
                f"_gradscope_user_{file.stem}", file
            )
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            _importable_from_cwd()
            module = importlib.import_module(target)
    except GradscopeError:
        raise
    except Exception as error:
        raise GradscopeError(
            f"--model {spec!r}: importing {target} failed "
            f"({type(error).__name__}: {first_line(error)})"
        ) from None
    cls = getattr(module, class_name, None)
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise GradscopeError(f"--model {spec!r}: {target} has no nn.Module class {class_name}")
    return cls


def parse_model_args(text: str | Mapping | None) -> dict[str, Any]:
    """``--model-args`` JSON (an object) as keyword arguments."""
    if text is None:
        return {}
    if isinstance(text, Mapping):
        return dict(text)
    try:
        args = json.loads(text)
    except json.JSONDecodeError as error:
        raise GradscopeError(
            f"--model-args is not valid JSON ({error.msg} at column {error.colno}); "
            """write an object like '{"hidden_size": 128}'"""
        ) from None
    if not isinstance(args, dict):
        raise GradscopeError(
            "--model-args must be a JSON object of keyword arguments, "
            """like '{"hidden_size": 128}'"""
        )
    return args


def _listed(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def build_from_state_dict(state_dict: Mapping[str, Tensor], cls: type, args: dict) -> nn.Module:
    """Instantiate ``cls(**args)`` and load ``state_dict`` strictly, naming every mismatch."""
    try:
        module = cls(**args)
    except Exception as error:
        raise GradscopeError(
            f"--model {cls.__name__}(**model-args) failed "
            f"({type(error).__name__}: {first_line(error)}); "
            "fix --model-args"
        ) from None
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    resized = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected {_listed(unexpected)}")
    if resized:
        problems.append(f"mis-sized (file vs model) {_listed(resized)}")
    if problems:
        raise GradscopeError(
            f"the weights do not fit {cls.__name__}: {'; '.join(problems)}; check --model and "
            "--model-args"
        )
    module.load_state_dict(state_dict, strict=True)
    return module


def load_model(
    source: str | Path | nn.Module,
    model: str | None = None,
    model_args: str | Mapping | None = None,
    trust: bool = False,
) -> LoadedModel:
    """Load a checkpoint file (or copy a module object) into a :class:`LoadedModel`."""
    if isinstance(source, nn.Module):
        try:
            return LoadedModel(copy.deepcopy(source), "object", None)
        except Exception as error:
            raise GradscopeError(
                f"cannot copy the model object ({type(error).__name__}: {error}); pass a path "
                "to a checkpoint instead"
            ) from None
    path = Path(source)
    loaded = read_checkpoint(path, trust)
    if isinstance(loaded, nn.Module):
        notes = [f"--model {model} ignored: the file holds a whole module"] if model else []
        return LoadedModel(loaded, "pickled-module", str(path), notes)
    if _is_state_dict(loaded):
        if model is None:
            raise GradscopeError(
                f"{path} holds only weights (a state_dict); pass the class with --model "
                "package.module:Class or path/to/file.py:Class (and --model-args if it needs them)"
            )
        module = build_from_state_dict(loaded, import_class(model), parse_model_args(model_args))
        return LoadedModel(module, "state-dict", str(path))
    raise GradscopeError(
        f"{path} holds a {type(loaded).__name__}, not a model or a state_dict; save the model "
        "with torch.save(model) or torch.save(model.state_dict())"
    )
