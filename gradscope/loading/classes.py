"""The user's model class (``--model``): importing it, its arguments, filling it with weights."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import Tensor, nn

from gradscope.errors import GradscopeError, first_line
from gradscope.loading.files import importable_from_cwd


def import_module_of(spec: str, option: str = "--model") -> ModuleType:
    """The module of ``package.module:Class`` or ``path/to/file.py:Class``."""
    target, _, class_name = spec.rpartition(":")
    if not target or not class_name:
        raise GradscopeError(
            f"{option} {spec!r}: write package.module:Class or path/to/file.py:Class"
        )
    try:
        if target.endswith(".py") or "/" in target or "\\" in target:
            file = Path(target)
            if not file.is_file():
                raise GradscopeError(f"{option} {spec!r}: no such file {file}")
            sys.path.insert(0, str(file.resolve().parent))
            module_spec = importlib.util.spec_from_file_location(
                f"_gradscope_user_{file.stem}", file
            )
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
            return module
        importable_from_cwd()
        return importlib.import_module(target)
    except GradscopeError:
        raise
    except Exception as error:
        raise GradscopeError(
            f"{option} {spec!r}: importing {target} failed "
            f"({type(error).__name__}: {first_line(error)})"
        ) from None


def import_class(spec: str, option: str = "--model") -> type:
    """The class named by ``package.module:Class`` or ``path/to/file.py:Class``."""
    module = import_module_of(spec, option)
    target, _, class_name = spec.rpartition(":")
    cls = getattr(module, class_name, None)
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise GradscopeError(f"{option} {spec!r}: {target} has no nn.Module class {class_name}")
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


def fitting_kwargs(cls: type, saved: Mapping[str, Any], named_only: bool = False) -> dict:
    """The saved hyper-parameters that ``cls.__init__`` accepts (by name, with ``named_only``)."""
    try:
        parameters = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return {}
    if not named_only and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(saved)
    named = {
        name
        for name, p in parameters.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    return {k: v for k, v in saved.items() if k in named and k != "self"}


def _listed(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def instantiate(cls: type, args: Mapping[str, Any], source: str = "") -> nn.Module:
    """``cls(**args)``, with a one-line error naming where the arguments came from."""
    try:
        return cls(**args)
    except Exception as error:
        given = f" with {source}" if source else " without arguments"
        raise GradscopeError(
            f"--model {cls.__name__}(...){given} failed "
            f"({type(error).__name__}: {first_line(error)}); set or override arguments with "
            """--model-args '{"name": value}'"""
        ) from None


def load_weights(module: nn.Module, state_dict: Mapping[str, Tensor]) -> nn.Module:
    """Load ``state_dict`` into ``module`` strictly, naming every mismatch."""
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
            f"the weights do not fit {type(module).__name__}: {'; '.join(problems)}; check "
            "--model and --model-args"
        )
    module.load_state_dict(state_dict, strict=True)
    return module
