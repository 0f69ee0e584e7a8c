"""Project configuration: ``[tool.gradscope]`` in the nearest pyproject.toml, or a file given
with ``--config`` (a pyproject.toml, or a gradscope.toml whose keys stand at the top level).

Keys are the long option names of ``gradscope analyze`` in snake case; ``[[tool.gradscope.models]]``
entries name the models ``gradscope check`` runs, each with a ``name``, a ``path`` and any
analysis option of its own. Values are checked here, once: an unknown key, a wrong type or a
bad value is a :class:`GradscopeError` naming the key and the file. Plain data: no torch.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradscope.errors import GradscopeError
from gradscope.hub import is_hub_id
from gradscope.options import AnalysisOptions, LoadOptions

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float))) and not isinstance(value, bool)


def _is_strings(value: Any) -> bool:
    return isinstance(value, str) or (
        isinstance(value, list) and all(isinstance(item, str) for item in value)
    )


#: What each key accepts: a test of the TOML value, and the words for a wrong one.
KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "int": (_is_int, "an integer"),
    "number": (_is_number, "a number"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "strings": (_is_strings, "a string or a list of strings"),
    "table": (lambda v: isinstance(v, (dict, str)), "a table or a JSON string"),
    "shape": (
        lambda v: (
            isinstance(v, str)
            or (isinstance(v, list) and all(_is_int(d) or isinstance(d, (str, list)) for d in v))
        ),
        'a shape: "4,50,8", [4, 50, 8], or a list of them',
    ),
    "int_or_str": (lambda v: _is_int(v) or isinstance(v, str), "an integer or a string"),
}

#: The keys of ``[tool.gradscope]`` and of each model entry, by kind.
OPTION_KEYS: dict[str, str] = {
    "model": "str",
    "model_args": "table",
    "trust": "bool",
    "allow_global": "strings",
    "nonlinearity": "str",
    "device": "str",
    "probe": "str",
    "steps": "int",
    "batch": "int",
    "seed": "int",
    "dtype": "str",
    "input_shape": "shape",
    "batch_first": "bool",
    "output_key": "str",
    "cell": "strings",
    "detect_cells": "bool",
    "what_if": "bool",
    "loss_at": "int_or_str",
    "depth": "int_or_str",
    "chi_probes": "int",
    "power_iterations": "int",
    "horizon": "int",
    "epsilon": "number",
    "burn_in": "int",
    "exponents": "int",
    "spectrum_steps": "int_or_str",
    "max_memory": "int_or_str",
    "only": "strings",
    "stream": "bool",
    "format": "str",
    "fail_on": "strings",
    "exit_zero": "bool",
    "ignore": "strings",
    "output": "str",
    "html": "str",
    "github": "bool",
    "baseline": "str",
    "regression_tolerance": "number",
}
#: Keys a model entry has besides the options.
MODEL_KEYS = {"name": "str", "path": "str"}


@dataclass(frozen=True)
class ModelEntry:
    """One model ``gradscope check`` runs: its name, its checkpoint, its own options."""

    name: str
    path: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProjectConfig:
    """The options a configuration file sets, and its models; ``path`` is None for none."""

    path: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)
    models: tuple[ModelEntry, ...] = ()


def find_config(start: Path) -> Path | None:
    """The nearest pyproject.toml from ``start`` upwards, not past a repository root."""
    for folder in [start, *start.parents]:
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
        if (folder / ".git").exists():
            return None
    return None


def load_config(path: Path | None = None, start: Path | None = None) -> ProjectConfig:
    """The configuration in ``path`` (``--config``), else in the nearest pyproject.toml from
    ``start`` (the working directory); no file or no section means no options."""
    explicit = path is not None
    if path is None:
        path = find_config(Path.cwd() if start is None else start)
        if path is None:
            return ProjectConfig()
    path = Path(path)
    if not path.is_file():
        raise GradscopeError(
            f"--config {path}: no such file; give a pyproject.toml or gradscope.toml"
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise GradscopeError(f"{path}: not valid TOML ({error}); fix the file") from None
    section = data.get("tool", {}).get("gradscope")
    if section is None and explicit and path.name != "pyproject.toml":
        section = data  # a gradscope.toml: its keys stand at the top level
    if section is None:
        return ProjectConfig(path)
    if not isinstance(section, Mapping):
        raise GradscopeError(f"{path}: [tool.gradscope] must be a table")
    section = dict(section)
    models = section.pop("models", [])
    if not isinstance(models, list) or not all(isinstance(m, Mapping) for m in models):
        raise GradscopeError(f"{path}: models must be [[tool.gradscope.models]] tables")
    options = _resolved(_checked(section, OPTION_KEYS, path, "[tool.gradscope]"), path.parent)
    entries = tuple(_model(dict(entry), index, path) for index, entry in enumerate(models))
    names = [entry.name for entry in entries]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise GradscopeError(f"{path}: model names must differ; {', '.join(repeated)} repeats")
    return ProjectConfig(path, options, entries)


def _model(entry: dict[str, Any], index: int, path: Path) -> ModelEntry:
    where = f"[[tool.gradscope.models]] #{index + 1}"
    if "path" not in entry:
        raise GradscopeError(f"{path}: {where} needs a path (the checkpoint to check)")
    run_wide = sorted(set(entry) & set(RUN_KEYS))
    if run_wide:
        raise GradscopeError(
            f"{path}: {', '.join(run_wide)} in {where} applies to the whole run: set it in "
            "[tool.gradscope] or on the command line"
        )
    checked = _resolved(_checked(entry, {**MODEL_KEYS, **OPTION_KEYS}, path, where), path.parent)
    name = checked.pop("name", None) or Path(checked["path"]).stem
    return ModelEntry(name, checked.pop("path"), checked)


#: Keys that say where files are; read from the configuration file's folder.
PATH_KEYS = ("path", "output", "html", "baseline", "probe")
#: Keys of the whole run, not of one model.
RUN_KEYS = ("format", "fail_on", "exit_zero", "output", "html", "github")


def _resolved(options: dict[str, Any], root: Path) -> dict[str, Any]:
    """``options`` with its file paths (and a ``file.py:Class`` model) read from ``root``."""
    resolved = dict(options)
    for key in PATH_KEYS:
        value = resolved.get(key)
        hub = key == "path" and isinstance(value, str) and is_hub_id(value)
        if hub and not (root / value).exists():
            continue  # a Hugging Face Hub id, read from the local cache
        if isinstance(value, str) and value not in ("gaussian", "zeros"):
            resolved[key] = str(root / value)
    model = resolved.get("model")
    if isinstance(model, str) and ".py:" in model:
        file, _, name = model.rpartition(":")
        resolved["model"] = f"{root / file}:{name}"
    return resolved


#: The field of AnalysisOptions or LoadOptions each key sets, where its name differs.
FIELDS = {"horizon": "distance", "depth": "granularity", "cell": "cells"}
FIELDS |= {"allow_global": "allow_globals"}
LOAD_KEYS = ("model", "model_args", "trust", "allow_global", "nonlinearity", "stream")


def _valid(values: dict[str, Any], path: Path, where: str) -> None:
    """Refuse a value of the right kind but out of range or choice (``steps = -5``,
    ``dtype = "float16"``) before anything is loaded, naming the key and the file."""
    load, analysis = {}, {}
    for key, value in values.items():
        if key in OPTION_KEYS and key not in OUTPUT_KEYS:
            target = load if key in LOAD_KEYS else analysis
            if key in ("allow_global", "cell", "only"):
                value = tuple(as_list(value))
            elif key == "depth":
                value = str(value)
            elif key == "model_args" and isinstance(value, dict):
                continue
            target[FIELDS.get(key, key)] = value
    tolerance = values.get("regression_tolerance", 0.0)
    try:
        LoadOptions(**load)
        AnalysisOptions(**analysis)
        if not 0 <= tolerance < 1:
            raise GradscopeError(f"regression_tolerance must lie in [0, 1), not {tolerance}")
    except GradscopeError as error:
        raise GradscopeError(f"{path}: {where}: {_as_keys(str(error))}") from None


def _as_keys(message: str) -> str:
    """A message about command-line flags (``--steps``) reworded for config keys."""
    for key in sorted({*OPTION_KEYS, *FIELDS.values()}, key=len, reverse=True):
        message = message.replace(f"--{key.replace('_', '-')}", key)
    return message


def _checked(values: dict[str, Any], keys: dict[str, str], path: Path, where: str) -> dict:
    """``values`` with every key known, of its kind and in range, or one line naming the
    first that is not."""
    for key, value in values.items():
        kind = keys.get(key)
        if kind is None:
            close = [k for k in keys if k.replace("_", "") == key.replace("-", "").replace("_", "")]
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise GradscopeError(f"{path}: unknown key {key!r} in {where}{hint}")
        test, words = KINDS[kind]
        if not test(value):
            raise GradscopeError(f"{path}: {key} in {where} must be {words}, not {value!r}")
    _valid(values, path, where)
    return dict(values)


#: Keys the command line reads itself (what to write, what fails); the rest go to analyze().
OUTPUT_KEYS = ("format", "fail_on", "exit_zero", "ignore", "output", "html", "github")
OUTPUT_KEYS += ("baseline",)
OUTPUT_KEYS += ("regression_tolerance",)
#: The command-line parameter of a key, where its name differs.
PARAMETERS = {"format": "output_format"}
#: The analyze() keyword of a key, where its name differs.
KEYWORDS = {"allow_global": "allow_globals", "cell": "cells"}


def as_list(value: Any) -> list:
    """A string or a list, as a list."""
    return [value] if isinstance(value, str) else list(value)


def analysis_keywords(options: Mapping[str, Any], explicit: set[str]) -> dict[str, Any]:
    """The analyze() keywords the configuration sets, but for the parameters given on the
    command line (``explicit``, by parameter name), which win."""
    keywords = {}
    for key, value in options.items():
        if key in OUTPUT_KEYS or PARAMETERS.get(key, key) in explicit:
            continue
        if key in ("allow_global", "cell", "only"):
            value = tuple(as_list(value))
        elif key in ("depth", "spectrum_steps") and not isinstance(value, str):
            value = str(value)
        keywords[KEYWORDS.get(key, key)] = value
    return keywords


def run_ignores(given: list[str], options: Mapping[str, Any]) -> list[str]:
    """The command line's ``--ignore`` patterns and the configuration's, together."""
    return list(dict.fromkeys([*given, *as_list(options.get("ignore", []))]))


def output_values(options: Mapping[str, Any], explicit: set[str]) -> dict[str, Any]:
    """The output keys the configuration sets (``fail_on`` as comma-separated text, lists as
    lists), but for the parameters given on the command line."""
    values = {}
    for key in OUTPUT_KEYS:
        if key not in options or PARAMETERS.get(key, key) in explicit:
            continue
        value = options[key]
        if key == "ignore":
            continue  # ignores add up: see run_ignores
        if key == "fail_on":
            value = ",".join(as_list(value))
        values[PARAMETERS.get(key, key)] = value
    return values
