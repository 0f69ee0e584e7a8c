"""Analysis settings: the options of ``gradscope analyze``, checked and given their defaults."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from gradscope.errors import GradscopeError

DTYPES = ("float32", "float64")
BUILTIN_PROBES = ("gaussian", "zeros")
DEFAULT_EXPONENTS = 8
#: Depth view: random probes per block for chi, power iterations for sigma_max.
DEFAULT_CHI_PROBES = 2
DEFAULT_POWER_ITERATIONS = 2
#: A model without recurrent modules is probed with this batch unless told.
DEFAULT_DEPTH_BATCH = 32
#: ``--depth``: blocks (containers expanded, activations joined to their layer), leaves, or N.
DEPTH_MODES = ("blocks", "leaves")
#: The burn-in is this fraction of the steps, capped at MAX_DEFAULT_BURN_IN.
DEFAULT_BURN_IN_FRACTION = 0.2
MAX_DEFAULT_BURN_IN = 20
#: ``auto`` spectra: every step while states have at most this many dimensions ...
ALL_SPECTRA_UP_TO = 128
#: ... otherwise an eigendecomposition budget worth this many steps at that size ...
SPECTRA_BUDGET_STEPS = 100
#: ... but never fewer than this many spectra.
MIN_SPECTRA = 2


@dataclass(frozen=True)
class Settings:
    """What to probe with and how to judge it. ``None`` means "derive from the probe"."""

    steps: int = 100
    batch: int = 1
    seed: int = 0
    dtype: str = "float64"
    probe: str = "gaussian"
    input_shape: tuple[int, ...] | None = None
    batch_first: bool | None = None
    horizon: int | None = None
    epsilon: float = 1e-3
    burn_in: int | None = None
    exponents: int = DEFAULT_EXPONENTS
    spectrum_steps: int | str = "auto"
    device: str = "cpu"
    output_key: str | None = None
    cells: tuple[str, ...] = ()
    depth: str = "blocks"
    chi_probes: int = DEFAULT_CHI_PROBES
    power_iterations: int = DEFAULT_POWER_ITERATIONS

    def __post_init__(self) -> None:
        checks = [
            (self.steps > 0, f"--steps must be a positive number of time steps, not {self.steps}"),
            (self.batch > 0, f"--batch must be a positive batch size, not {self.batch}"),
            (self.dtype in DTYPES, f"--dtype must be float32 or float64, not {self.dtype!r}"),
            (
                0 < self.epsilon < 1 and math.isfinite(self.epsilon),
                f"--epsilon must lie strictly between 0 and 1 (e.g. 1e-3), not {self.epsilon}",
            ),
            (
                self.horizon is None or self.horizon > 0,
                f"--horizon must be a positive number of steps, not {self.horizon}",
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
                self.depth in DEPTH_MODES or (self.depth.isdigit() and int(self.depth) > 0),
                f"--depth must be blocks, leaves or a positive module depth, not {self.depth!r}",
            ),
            (self.chi_probes > 0, f"--chi-probes must be 1 or more, not {self.chi_probes}"),
            (
                self.power_iterations > 0,
                f"--power-iterations must be 1 or more, not {self.power_iterations}",
            ),
            (
                self.input_shape is None or all(d > 0 for d in self.input_shape),
                f"--input-shape needs positive sizes, not {self.input_shape}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise GradscopeError(message)

    def for_steps(self, steps: int, batch: int) -> Settings:
        """The settings with the probe's actual length filled in (horizon, burn-in)."""
        burn_in = self.burn_in
        if burn_in is None:
            burn_in = min(MAX_DEFAULT_BURN_IN, int(steps * DEFAULT_BURN_IN_FRACTION))
        if burn_in >= steps:
            raise GradscopeError(
                f"--burn-in {burn_in} leaves no steps to measure: make it smaller than the "
                f"probe length ({steps} steps) or raise --steps"
            )
        return dataclasses.replace(
            self, steps=steps, batch=batch, horizon=self.horizon or steps, burn_in=burn_in
        )

    def to_dict(self) -> dict:
        """The settings as the report's ``settings`` object."""
        data = dataclasses.asdict(self)
        data["input_shape"] = list(self.input_shape) if self.input_shape else None
        data["cells"] = list(self.cells)
        return data


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


def spectrum_sample_count(setting: int | str, steps: int, batch: int, state_size: int) -> int:
    """How many (step, batch element) Jacobians get a full eigendecomposition.

    ``all``: every one. ``N``: N evenly spaced steps, every batch element. ``auto``: every step
    while the state has at most ALL_SPECTRA_UP_TO dimensions, else as many as cost about
    SPECTRA_BUDGET_STEPS eigendecompositions of that size (eig is cubic in the state size).
    """
    total = steps * batch
    if setting == "all":
        return total
    if isinstance(setting, int):
        return min(steps, setting) * batch
    budget = max(MIN_SPECTRA, int(SPECTRA_BUDGET_STEPS * (ALL_SPECTRA_UP_TO / state_size) ** 3))
    if state_size <= ALL_SPECTRA_UP_TO:
        budget = max(budget, steps)
    return min(total, budget)
