"""What the user asked for, typed and checked once: how to load a model, and how to analyse it.

Both are frozen dataclasses whose ``None`` fields mean "derive it" (from the model, the probe
or the file). They accept what a user has at hand (``input_shape="8,100,32"``, ``cells="rnn"``,
``probe=tensor``) and keep it in one form; a bad value raises :class:`GradscopeError` with the
flag's name. Plain data: no torch here.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import numbers
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradscope.errors import GradscopeError

DTYPES = ("float32", "float64", "float16", "bfloat16")
#: The analysis dtype when neither the user nor the model's config names one.
DEFAULT_DTYPE = "float64"
#: Dtypes too narrow for linear algebra: Jacobians and spectra are taken in float32, the traced
#: forward and backward pass (NaN/Inf origins, headroom) in the dtype itself.
LOW_PRECISION = ("float16", "bfloat16")
BUILTIN_PROBES = ("gaussian", "zeros")
NONLINEARITIES = ("tanh", "relu")
#: ``--depth``: blocks (containers expanded, activations joined to their layer), leaves, or N.
GRANULARITIES = ("blocks", "leaves")
#: Probe length and batch when neither the user nor the model says otherwise.
DEFAULT_STEPS = 100
DEFAULT_BATCH = 1
#: A model without recurrent modules is probed with this batch unless told.
DEFAULT_DEPTH_BATCH = 32
#: ... and one that reads token ids with this one: a language model's activations (and its
#: logits over the vocabulary) are large, and its positions already give many samples.
DEFAULT_TOKEN_BATCH = 2
#: The burn-in is this fraction of the steps, capped at MAX_DEFAULT_BURN_IN.
DEFAULT_BURN_IN_FRACTION = 0.2
MAX_DEFAULT_BURN_IN = 20


def strings(value: str | Iterable[str]) -> tuple[str, ...]:
    """One string, or several, as a tuple (what a repeatable option is given as)."""
    return (value,) if isinstance(value, str) else tuple(value)


@dataclass(frozen=True)
class LoadOptions:
    """How to read a file: the class, its arguments, trust, and assumptions for inference;
    ``only``: the ``--only`` patterns (a sharded checkpoint rebuilt from weights reads only
    the tensors of the modules they select; a Hugging Face model, with ``stream``, holds only
    their weights and reads the others from its file as it runs, which the CPU does)."""

    model: str | None = None
    model_args: str | Mapping | None = None
    trust: bool = False
    allow_globals: tuple[str, ...] = ()
    nonlinearity: str | None = None
    batch_first: bool | None = None
    only: tuple[str, ...] = ()
    stream: bool = True

    def __post_init__(self) -> None:
        for name in ("only", "allow_globals"):
            object.__setattr__(self, name, strings(getattr(self, name)))
        if self.nonlinearity not in (None, *NONLINEARITIES):
            raise GradscopeError(f"--nonlinearity must be tanh or relu, not {self.nonlinearity!r}")


@dataclass(frozen=True)
class AnalysisOptions:
    """What to probe with and how to judge it. ``None`` means "derive from the probe".

    ``probe`` is ``gaussian``, ``zeros``, the path of a tensor file, or a tensor (or array)
    shaped as the model's input, or a dict, tuple or list of them (``model(**probe)``,
    ``model(*probe)``). ``input_shape`` is one shape; several, or named ones
    (``x=4,50,8``), are kept in ``input_shapes`` for a model called with several inputs.
    ``dtype`` None is float64, or the dtype a Hugging Face model's config names.
    ``distance`` is the distance L the model must learn across (``--horizon``; by default each
    core's own length); ``granularity`` that of the depth view (``--depth``). ``detect_cells``:
    find modules the model loops as recurrent cells and step them as ``--cell`` would.
    ``loss_at``: the time step the sequence view's loss reads (``last``, ``all``, or a step
    number, negative from the end). ``what_if``: apply each fix gradscope can to a copy of
    the model and measure its effect.
    """

    steps: int | None = None
    batch: int | None = None
    seed: int = 0
    dtype: str | None = None
    probe: Any = "gaussian"
    input_shape: tuple[int, ...] | None = None
    batch_first: bool | None = None
    distance: int | None = None
    epsilon: float = 1e-3
    burn_in: int | None = None
    exponents: int = 8
    spectrum_steps: int | str = "auto"
    device: str = "cpu"
    output_key: str | None = None
    cells: tuple[str, ...] = ()
    granularity: str = "blocks"
    chi_probes: int = 2
    power_iterations: int = 2
    input_shapes: tuple[tuple[str | None, tuple[int, ...]], ...] = ()
    detect_cells: bool = True
    loss_at: int | str = "last"
    what_if: bool = True
    max_memory: int | None = None
    only: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        shapes = parse_input_shapes(self.input_shape) if self.input_shape is not None else ()
        if len(shapes) == 1 and shapes[0][0] is None:
            object.__setattr__(self, "input_shape", shapes[0][1])
        elif shapes:
            object.__setattr__(self, "input_shape", None)
            object.__setattr__(self, "input_shapes", shapes)
        for name in ("cells", "only"):
            object.__setattr__(self, name, strings(getattr(self, name)))
        if isinstance(self.spectrum_steps, str):
            object.__setattr__(self, "spectrum_steps", parse_spectrum_steps(self.spectrum_steps))
        if isinstance(self.probe, Path):
            object.__setattr__(self, "probe", str(self.probe))
        object.__setattr__(self, "loss_at", parse_loss_at(self.loss_at))
        if isinstance(self.max_memory, str):
            object.__setattr__(self, "max_memory", parse_memory(self.max_memory))
        elif isinstance(self.max_memory, float) and math.isfinite(self.max_memory):
            object.__setattr__(self, "max_memory", int(self.max_memory))
        for ok, message in self._checks():
            if not ok:
                raise GradscopeError(message)

    def _checks(self) -> list[tuple[bool, str]]:
        return [
            (
                self.steps is None or self.steps > 0,
                f"--steps must be a positive number of time steps, not {self.steps}",
            ),
            (
                self.batch is None or self.batch > 0,
                f"--batch must be a positive batch size, not {self.batch}",
            ),
            (
                self.dtype is None or self.dtype in DTYPES,
                f"--dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}",
            ),
            (
                0 < self.epsilon < 1 and math.isfinite(self.epsilon),
                f"--epsilon must lie strictly between 0 and 1 (e.g. 1e-3), not {self.epsilon}",
            ),
            (
                self.distance is None or self.distance > 0,
                f"--horizon must be a positive number of steps, not {self.distance}",
            ),
            (
                self.burn_in is None or self.burn_in >= 0,
                f"--burn-in must be 0 or more steps, not {self.burn_in}",
            ),
            (self.exponents > 0, f"--exponents must be 1 or more, not {self.exponents}"),
            (
                self.spectrum_steps in ("auto", "all")
                or (isinstance(self.spectrum_steps, int) and self.spectrum_steps > 0),
                "--spectrum-steps must be auto, all or a positive number of steps, "
                f"not {self.spectrum_steps!r}",
            ),
            (
                self.granularity in GRANULARITIES
                or (self.granularity.isdigit() and int(self.granularity) > 0),
                "--depth must be blocks, leaves or a positive module depth, "
                f"not {self.granularity!r}",
            ),
            (self.chi_probes > 0, f"--chi-probes must be 1 or more, not {self.chi_probes}"),
            (
                self.power_iterations > 0,
                f"--power-iterations must be 1 or more, not {self.power_iterations}",
            ),
            (
                self.max_memory is None
                or (isinstance(self.max_memory, int) and self.max_memory > 0),
                f"--max-memory must be a positive size such as 2GB, not {self.max_memory}",
            ),
            (
                self.input_shape is None or all(d > 0 for d in self.input_shape),
                f"--input-shape needs positive sizes, not {self.input_shape}",
            ),
        ]

    def selects(self, path: str) -> bool:
        """Whether ``--only`` leaves the module at ``path`` (``""``: the model) to measure."""
        return selects_module(self.only, path)

    @property
    def probe_kind(self) -> str:
        """``gaussian``, ``zeros``, ``file`` (a path) or ``tensor`` (given in memory)."""
        if isinstance(self.probe, str):
            return self.probe if self.probe in BUILTIN_PROBES else "file"
        return "tensor"

    @property
    def builtin_probe(self) -> bool:
        """Whether gradscope makes the probe itself (``gaussian`` or ``zeros``)."""
        return self.probe_kind in BUILTIN_PROBES

    @property
    def float_dtype(self) -> str:
        """The dtype the probe and the views run in: ``dtype``, or float64 when unset."""
        return self.dtype or DEFAULT_DTYPE

    @property
    def explicit_length(self) -> bool:
        """Whether the user set the probe's steps or batch."""
        return self.steps is not None or self.batch is not None

    def with_length(self, steps: int | None = None, batch: int | None = None) -> AnalysisOptions:
        """The options with the probe length filled in where the user left it open."""
        return dataclasses.replace(
            self,
            steps=self.steps or steps or DEFAULT_STEPS,
            batch=self.batch or batch or DEFAULT_BATCH,
        )

    def for_steps(self, steps: int, batch: int) -> AnalysisOptions:
        """The options with the probe's actual length filled in (distance, burn-in)."""
        burn_in = self.burn_in
        if burn_in is None:
            burn_in = min(MAX_DEFAULT_BURN_IN, int(steps * DEFAULT_BURN_IN_FRACTION))
        if burn_in >= steps:
            raise GradscopeError(
                f"--burn-in {burn_in} leaves no steps to measure: make it smaller than the "
                f"probe length ({steps} steps) or raise --steps"
            )
        return dataclasses.replace(
            self, steps=steps, batch=batch, distance=self.distance or steps, burn_in=burn_in
        )


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,100,32"`` or ``"1x100x32"`` -> (1, 100, 32)."""
    parts = text.replace("x", ",").replace(" ", "").strip("()[]").split(",")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise GradscopeError(
            f"--input-shape {text!r} is not a shape: give positive sizes like 1,100,32"
        )
    return shape


def parse_input_shapes(value: Any) -> tuple[tuple[str | None, tuple[int, ...]], ...]:
    """Input shapes as given: ``"4,50,8"``, ``(4, 50, 8)``, ``"x=4,50,8"``, or a sequence of
    them -> ((name or None, shape), ...); positional ones must come before named ones."""
    if isinstance(value, str) or _sizes(value):
        value = [value]
    if not isinstance(value, Iterable):
        raise GradscopeError(f"--input-shape {value!r} is not a shape: give sizes like 1,100,32")
    shapes: list[tuple[str | None, tuple[int, ...]]] = []
    for item in value:
        name = None
        if isinstance(item, str):
            name, _, text = item.rpartition("=")
            shape = parse_shape(text)
        elif _sizes(item):
            shape = tuple(int(d) for d in item)
            if not shape or any(d <= 0 for d in shape):
                raise GradscopeError(f"--input-shape needs positive sizes, not {shape}")
        else:
            raise GradscopeError(f"--input-shape {item!r} is not a shape: give sizes like 1,100,32")
        shapes.append((name.strip() or None if name else None, shape))
    first_named = next((i for i, (name, _) in enumerate(shapes) if name), len(shapes))
    if any(name is None for name, _ in shapes[first_named:]):
        raise GradscopeError(
            "--input-shape: give the positional inputs first, then the named ones (name=4,50,8)"
        )
    return tuple(shapes)


def _sizes(value: Any) -> bool:
    """Whether ``value`` is a sequence of integers (Python or NumPy), one shape."""
    try:
        items = list(value)
    except TypeError:
        return False
    return all(isinstance(d, numbers.Integral) for d in items)


def parse_loss_at(value: Any) -> int | str:
    """``last``, ``all`` or a step number (negative counts from the end)."""
    if value in ("last", "all"):
        return value
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    try:
        return int(str(value))
    except ValueError:
        raise GradscopeError(
            f"--loss-at must be last, all or a time step number, not {value!r}"
        ) from None


def selects_module(patterns: tuple[str, ...], path: str) -> bool:
    """Whether ``--only`` ``patterns`` select the module at ``path`` (``""``: the model): one
    matches, as a glob, its path or the path of a module that holds it, or a tail of either
    (``encoder`` in ``model.encoder``: below a wrapper's prefix). No patterns: all."""
    if not patterns:
        return True
    parts = path.split(".") if path else []
    # the module and each module that holds it (a glob such as 'layers.[12]' names a block,
    # and selects what is inside it too), each by its path or a tail of it
    holders = [parts[:end] for end in range(1, len(parts) + 1)]
    tails = {".".join(holder[i:]) for holder in holders for i in range(len(holder))} or {""}
    return any(
        fnmatch.fnmatchcase(tail or "(model)", pattern) or is_within_path(tail, pattern)
        for tail in tails
        for pattern in patterns
    )


def selects_weight(patterns: tuple[str, ...], key: str) -> bool:
    """Whether ``--only`` ``patterns`` select the module that holds the state-dict entry
    ``key``."""
    return selects_module(patterns, key.rsplit(".", 1)[0] if "." in key else "")


def is_within_path(path: str, holder: str) -> bool:
    """Whether the module at ``path`` is the one at ``holder`` or inside it."""
    return path == holder or path.startswith(holder + ".")


def parse_spectrum_steps(text: str) -> int | str:
    """``auto``, ``all`` or a positive integer."""
    if text in ("auto", "all"):
        return text
    try:
        return int(text)
    except ValueError:
        raise GradscopeError(
            f"--spectrum-steps must be auto, all or a positive number of steps, not {text!r}"
        ) from None


MEMORY_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_memory(text: str) -> int:
    """Bytes from a size such as ``512MB``, ``2GB``, ``1.5g`` or ``1000000`` (binary units)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if match is None or float(match[1]) <= 0:
        raise GradscopeError(
            f"--max-memory must be a positive size such as 512MB or 2GB, not {text!r}"
        )
    return int(float(match[1]) * MEMORY_UNITS[match[2]])


#: The defaults, as the command line shows them.
DEFAULTS = AnalysisOptions()
