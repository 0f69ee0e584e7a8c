"""The report: plain data that every renderer reads and ``--format json`` writes (schema 1)."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from gradscope.options import DEFAULT_DTYPE, DEFAULTS

SCHEMA_VERSION = 1
#: Field metadata of data kept for the code and left out of the JSON report.
INTERNAL = {"json": False}


class Word(str, Enum):
    """A closed set of words the report uses: compares, formats and serialises as its text."""

    def __str__(self) -> str:
        return self.value


class Status(Word):
    """A verdict, from best to worst; the overall status is the worst of the parts."""

    HEALTHY = "healthy"
    VANISHING = "vanishing"
    EXPLODING = "exploding"
    NONFINITE = "nonfinite"

    @property
    def rank(self) -> int:
        """0 for healthy up to 3 for nonfinite."""
        return STATUSES.index(self)


#: Statuses from best to worst, as text.
STATUSES = tuple(status.value for status in Status)
FAILING_STATUSES = STATUSES[1:]
#: ``--fail-on`` words beside the statuses: a recurrence that no view measured over time, and
#: any module with parameters that no view measured.
UNMEASURED_RECURRENCE = "unmeasured-recurrence"
INCOMPLETE = "incomplete"
#: ``--fail-on``: a part worse than in the ``--baseline`` report.
REGRESSION = "regression"
#: The kind (and id) of a finding on a part no view measured.
NOT_MEASURED = "not-measured"
#: The ids a finding can have (what ``--ignore`` names).
FINDING_IDS = (
    "vanishing-gradient",
    "exploding-gradient",
    "nonfinite-values",
    "nonfinite-weights",
    "low-precision",
    "transient-growth",
    NOT_MEASURED,
    "regression",
)
FAIL_ON_CHOICES = (*FAILING_STATUSES, UNMEASURED_RECURRENCE, INCOMPLETE, REGRESSION)
#: What fails by default: every non-healthy status, a recurrence left unmeasured, and a part
#: worse than its baseline.
DEFAULT_FAIL_ON = (*FAILING_STATUSES, UNMEASURED_RECURRENCE, REGRESSION)


class Severity(Word):
    """How much a finding weighs: an error decides the status, a warning only informs."""

    ERROR = "error"
    WARNING = "warning"


class FixId(Word):
    """The stable ids of the fixes gradscope knows."""

    CLIP_GRAD_NORM = "clip-grad-norm"
    USE_LSTM = "use-lstm"
    USE_GRU = "use-gru"
    FORGET_GATE_BIAS = "forget-gate-bias"
    UPDATE_GATE_BIAS = "update-gate-bias"
    ORTHOGONAL_INIT = "orthogonal-init"
    SPECTRAL_NORM = "spectral-norm"
    RESIDUAL_CONNECTIONS = "residual-connections"
    SCALE_RESIDUAL_BRANCH = "scale-residual-branch"
    NORMALIZATION = "normalization"
    CHANGE_ACTIVATION = "change-activation"
    INIT_GAIN = "init-gain"
    RECEPTIVE_FIELD = "receptive-field"
    STABLE_FORMULATION = "stable-formulation"
    ADD_EPSILON = "add-epsilon"
    LOWER_LEARNING_RATE = "lower-learning-rate"
    RESTORE_WEIGHTS = "restore-weights"
    USE_BFLOAT16 = "use-bfloat16"
    LOSS_SCALING = "loss-scaling"


@dataclass
class Settings:
    """What the analysis ran with: the options as applied, and the probe it built.

    Over depth alone, ``steps``, ``distance`` and ``burn_in`` are None: there is no time axis.
    ``input_shape`` is the main input's; ``inputs`` every input's shape, by position or name,
    for a model called with several.
    """

    steps: int | None = DEFAULTS.steps
    batch: int | None = DEFAULTS.batch
    seed: int = DEFAULTS.seed
    dtype: str = DEFAULT_DTYPE
    probe: str = DEFAULTS.probe
    input_shape: list[int] | None = None
    inputs: dict[str, list[int]] = field(default_factory=dict)
    batch_first: bool | None = DEFAULTS.batch_first
    distance: int | None = field(default=DEFAULTS.distance, metadata={"json": "horizon"})
    epsilon: float = DEFAULTS.epsilon
    burn_in: int | None = DEFAULTS.burn_in
    exponents: int = DEFAULTS.exponents
    spectrum_steps: int | str = DEFAULTS.spectrum_steps
    device: str = DEFAULTS.device
    output_key: str | None = DEFAULTS.output_key
    cells: list[str] = field(default_factory=list)
    granularity: str = field(default=DEFAULTS.granularity, metadata={"json": "depth"})
    chi_probes: int = DEFAULTS.chi_probes
    power_iterations: int = DEFAULTS.power_iterations
    loss: str = "seeded unit projection of the output"
    loss_at: int | str = DEFAULTS.loss_at
    config: str | None = None
    spectrum_samples: dict[str, int] = field(default_factory=dict)


@dataclass
class ModelDescription:
    """What was analysed: the file and its checkpoint kind, the class, and what was assumed."""

    path: str | None
    checkpoint_kind: str = field(metadata={"json": "format"})
    class_name: str | None = field(metadata={"json": "class"})
    parameters: int
    architecture: str = "module"
    not_analysed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Extremes:
    """Median and maximum of a quantity over the sampled steps (NaN when unmeasured)."""

    median: float
    max: float


@dataclass(frozen=True)
class JacobianSummary:
    """The step Jacobian ``J_t = ds_t/ds_{t-1}`` over the trajectory: its spectral radius and
    largest singular value at ``samples`` (step, batch element) pairs, by ``method``: "dense"
    (eigen- and singular values of the materialised Jacobian) or "krylov" (matrix-free:
    Arnoldi and Golub-Kahan on products with it, with the largest relative ``residual`` of
    each estimate)."""

    spectral_radius: Extremes
    sigma_max: Extremes
    samples: int
    method: str = "dense"
    residual: KrylovResidual | None = None


@dataclass(frozen=True)
class KrylovResidual:
    """The largest relative residual of the matrix-free estimates of a core's spectra."""

    spectral_radius: float
    sigma_max: float


@dataclass(frozen=True)
class GateSummary:
    """The gate that keeps the state (LSTM forget, GRU update): its mean along the trajectory
    and its mean total bias (``b_ih + b_hh``; None without biases)."""

    gate: str
    mean: float
    bias_mean: float | None


@dataclass(frozen=True)
class WeightSummary:
    """A vanilla RNN's ``W_hh``: spectral radius and sigma_max against Pascanu's bound."""

    spectral_radius: float
    sigma_max: float
    pascanu_bound: float


@dataclass
class SequenceGradient:
    """The sequence view: the gradient at the model's input against the lag from the step the
    loss reads, judged like a core over ``distance`` steps.

    ``grad_norm_by_lag[k]`` is ``||dL/dx_{t-k}||`` pooled over the batch, ``t`` the loss's
    step (over all steps for ``loss_at = "all"``); ``mixers`` the kinds of module that mix
    time in the model; ``effective_horizon`` the number of lags that keep at least epsilon
    times the peak (None: every lag measured does).
    """

    grad_norm_by_lag: list[float]
    loss_at: int | str
    steps: int
    mixers: list[str] = field(default_factory=list)
    effective_horizon: int | None = None
    distance: int | None = field(default=None, metadata={"json": "horizon"})
    status: str = "healthy"


@dataclass
class CellState:
    """How a custom cell is called: the argument its state comes in (``argument 1``,
    ``keyword h``), where the next state lies in what it returns (``output``,
    ``output[1]``), how many tensors and values the state holds, what else is held per step,
    and whether a run showed it (else it was assumed)."""

    argument: str
    output: str
    tensors: int
    size: int
    held: list[str] = field(default_factory=list)
    observed: bool = True


@dataclass
class RecurrentCore:
    """Measurements of one (layer, direction) of a recurrent module, or of one cell."""

    name: str
    cell: str
    layer: int
    direction: str
    input_size: int
    hidden_size: int
    state_size: int
    steps: int
    grad_norm: list[float]
    lyapunov: list[float]
    memory_horizon: float | None
    jacobian: JacobianSummary
    status: str = "healthy"
    distance: int = field(default=0, metadata={"json": "horizon"})
    burn_in: int = 0
    proj_size: int = 0
    num_layers: int = 1
    bidirectional: bool = False
    batch_first: bool = False
    is_cell: bool = False
    gates: GateSummary | None = None
    weights: WeightSummary | None = None
    finite: bool = True
    state: CellState | None = None

    @property
    def key(self) -> tuple[str, int, str]:
        """(module, layer, direction): what names one core, as a finding's evidence does."""
        return (self.name, self.layer, self.direction)

    @property
    def label(self) -> str:
        """A short human name: ``encoder``, ``encoder[l1 reverse]``."""
        fields = ("name", "layer", "direction", "is_cell", "num_layers", "bidirectional")
        return core_label({field: getattr(self, field) for field in fields})

    @property
    def top_exponent(self) -> float:
        """lambda_1, the largest Lyapunov exponent (NaN when unmeasured)."""
        return self.lyapunov[0] if self.lyapunov else math.nan

    @property
    def grad_norm_by_lag(self) -> list[float]:
        """``grad_norm`` by lag: steps before the last time step, where the loss reads."""
        return self.grad_norm[::-1]


@dataclass
class DepthLayer:
    """One block of a deep stack, input side first: the gradient at its output and its gain.

    ``grad_norm`` is ``||dL/da||`` at the block's output; ``gain`` the measured ratio of the
    gradient at its input to that at its output (what backpropagation really did here); ``chi``
    the mean squared singular value of its Jacobian (``||J||_F^2 / n_out``, what it does to an
    isotropic gradient) and ``sigma_max`` its largest singular value, both estimated
    matrix-free. A residual block (Jacobian ``I + B``) has ``branch_chi``, the gain of ``B``;
    when its skip is a projection shortcut (a ResNet's downsampling block), ``shortcut`` names
    that module and the skip path's Jacobian ``P`` takes the identity's place (``P + B``).
    ``chi_rel_stderr`` is the standard error of the ``chi`` estimate over ``chi`` (None with one
    probe); ``sigma_max_method`` how the JVPs behind ``sigma_max`` were taken: ``jvp``, or
    ``jvp-math-attention`` where attention ran through its math backend (None where no JVP
    went through).
    ``chained`` is False when what the next block reads is not this block's output: work the
    depth view does not see (a functional ``F.relu``, a skip added in ``forward``) sits between.
    ``side_outputs`` are what the block gives besides the stream (a skip, a cache, attention
    weights), as ``module[1]``: branches off the stack, not followed by the depth view.
    """

    name: str
    type: str
    modules: list[str]
    input_size: int
    output_size: int
    grad_norm: float
    gain: float
    chi: float
    sigma_max: float
    residual: bool = False
    branch_chi: float | None = None
    saturated: float | None = None
    dead: float | None = None
    activation: str | None = None
    parent: str | None = None
    indices: list[int] = field(default_factory=list)
    branch_last: str | None = None
    same_shape: bool | None = None
    chained: bool = True
    side_outputs: list[str] = field(default_factory=list)
    chi_rel_stderr: float | None = None
    sigma_max_method: str | None = None
    shortcut: str | None = None


@dataclass
class DepthStack:
    """The whole stack: gradient change from output to input, and the end-to-end Jacobian.

    ``decades`` is ``log10(||dL/dx|| / ||dL/da_last||)`` (negative: vanishing towards the input;
    ``a_last`` is what the model returns when its own code changes the last block's output);
    ``spread`` the largest singular value of the input-output Jacobian over its RMS singular
    value (1 for dynamical isometry).
    """

    blocks: int
    input_grad_norm: float
    output_grad_norm: float
    decades: float
    gain_per_block: float
    sigma_max: float | None
    rms_singular_value: float
    spread: float | None
    residual_blocks: int
    granularity: str
    estimator: dict[str, Any]
    status: str = "healthy"
    distance: int = field(default=0, metadata={"json": "horizon"})


@dataclass
class Unmeasured:
    """Modules with parameters that no view measured, for one reason.

    ``recurrent`` marks a recurrence (a recurrent module or cell) that ran and was not
    measured over time: what the default ``--fail-on`` fails on.
    """

    reason: str
    modules: list[str]
    parameters: int
    recurrent: bool = False


@dataclass
class Coverage:
    """Which parameterised modules each view measured, and what share of the parameters.

    ``views`` maps a view (``recurrent``, ``depth``, ``end-to-end``, ``lookup``) to the modules
    it measured; ``end-to-end`` is a feed-forward part too short to be a stack (fewer than three
    blocks beside recurrent cores), whose effect is in the gradients measured at the cores and
    the input; ``lookup`` an embedding, through which no gradient passes. ``complete`` is True
    when every parameter was measured.
    """

    parameters: int
    measured_parameters: int
    share: float
    views: dict[str, list[str]] = field(default_factory=dict)
    not_measured: list[Unmeasured] = field(default_factory=list)
    complete: bool = True

    @property
    def unmeasured_recurrence(self) -> list[Unmeasured]:
        """The groups that are a recurrence left unmeasured."""
        return [group for group in self.not_measured if group.recurrent]


@dataclass
class WeightFault:
    """A parameter or buffer of the checkpoint that holds NaN or Inf before anything runs."""

    name: str
    nan: int
    inf: int
    numel: int


@dataclass
class Origin:
    """Where a NaN or Inf first appeared in one pass (``forward`` in execution order,
    ``backward`` in the order autograd ran): the operation, the module running it (its path
    and type), the source line that called it, and its cause.

    ``cause`` is one of :data:`ORIGIN_CAUSES`; ``detail`` says it with the numbers (the
    smallest value a log read, the weight that holds Inf). ``step`` is the time step for a
    recurrent module (the first step whose output is not finite) or a cell called once per
    step; ``call`` counts the module's calls in the forward, from 1.
    """

    direction: str
    module: str
    module_type: str
    op: str
    value: str
    cause: str
    detail: str
    source: str | None = None
    step: int | None = None
    call: int | None = None

    @property
    def place(self) -> str:
        """The module in words: ``blocks.2 (LogBlock)``, ``(model) (Sequential)``."""
        return f"{self.module or '(model)'} ({self.module_type})"


#: The ``where["view"]`` of the findings about the numbers themselves: weights that hold NaN
#: or Inf, where a pass first broke, and a low-precision dtype's headroom.
NUMERICS_VIEWS = ("weights", "forward", "backward", "headroom")
#: What can cause a non-finite value, as :attr:`Origin.cause` names it.
ORIGIN_CAUSES = (
    "nonfinite-weight",
    "nonfinite-input",
    "log-of-non-positive",
    "sqrt-of-negative",
    "division-by-zero",
    "power-of-negative",
    "overflow",
    "infinite-derivative",
    "follows-forward",
    "nan-from-finite",
    "unseen",
)


@dataclass
class Peak:
    """The largest magnitude a pass produced, and the module and operation that produced it."""

    value: float
    module: str
    op: str


@dataclass
class Underflow:
    """A part whose gradient norm falls below a dtype's smallest normal from ``lag`` on
    (below its smallest subnormal, where it becomes 0, from ``zero_lag``)."""

    part: str
    lag: int
    zero_lag: int | None = None

    @property
    def place(self) -> str:
        """``(model)[l0] from lag 23``; ``depth from block 5 from the output``."""
        if self.part == "depth":
            return f"depth from block {self.lag + 1} counted from the output"
        return f"{self.part} from lag {self.lag}"


@dataclass
class Headroom:
    """How much of one dtype's range the analysis used: decades between the largest
    activation (and gradient) and the dtype's maximum, and the parts whose gradient underflows
    its smallest normal."""

    dtype: str
    max: float
    smallest_normal: float
    activation_decades: float | None
    gradient_decades: float | None
    underflow: list[Underflow] = field(default_factory=list)


@dataclass
class Numerics:
    """Whether the numbers stay finite, and where they first break: parameters that already
    hold NaN or Inf, the first non-finite value of the forward and of the backward pass (in
    ``dtype``, the analysis dtype), the largest activation and gradient, and each dtype's
    headroom."""

    dtype: str
    nonfinite_weights: list[WeightFault] = field(default_factory=list)
    forward: Origin | None = None
    backward: Origin | None = None
    output_finite: bool = True
    largest_activation: Peak | None = None
    largest_gradient: Peak | None = None
    headroom: list[Headroom] = field(default_factory=list)
    traced: bool = True

    @property
    def finite(self) -> bool:
        """No weight, forward value or gradient was NaN or Inf."""
        return not self.nonfinite_weights and self.forward is None and self.backward is None


@dataclass(frozen=True)
class Note:
    """Something a reader of the report should know, from the stage that found it: an
    assumption made, an option ignored, a part not measured."""

    stage: str
    text: str


@dataclass(frozen=True)
class Evidence:
    """What a finding rests on, as data: the part it is about and the deciding measurement.

    ``part`` is ``"core"`` (``key`` = (module, layer, direction)) or ``"stack"``; ``reason``
    states the measurement in one clause, which a fix quotes as its "why".
    """

    part: str
    key: tuple[str, int, str] | None
    reason: str


@dataclass
class Finding:
    """One diagnosis: what is wrong, where, by how much, and which fixes apply."""

    id: str
    kind: str
    severity: str
    where: dict[str, Any]
    message: str
    fixes: list[str] = field(default_factory=list)
    evidence: Evidence | None = field(default=None, metadata=INTERNAL)
    ignored: bool = False


@dataclass
class FixEffect:
    """One number of a part before the fix and after it, measured on a copy of the model."""

    where: str
    metric: str
    before: float | None
    after: float | None


@dataclass
class Fix:
    """One remedy, with why it applies and a snippet that fits the model at hand; ``effect``
    and ``status_after`` where it was applied to a copy and measured (``measured`` says what
    was changed, or why nothing could be measured), and ``helps``: whether it was measured to
    help (None when not measured)."""

    id: str
    title: str
    detail: str
    snippet: str
    effect: list[FixEffect] = field(default_factory=list)
    status_after: str | None = None
    measured: str | None = None
    helps: bool | None = None


def core_label(core: dict[str, Any]) -> str:
    """A core's short human name from its fields (a report's JSON core, or a core's):
    ``encoder``, ``encoder[l1 reverse]``."""
    name = core.get("name") or "(model)"
    if core.get("is_cell") or (core.get("num_layers", 1) == 1 and not core.get("bidirectional")):
        return name
    reverse = " reverse" if core.get("direction") == "reverse" else ""
    return f"{name}[l{core.get('layer', 0)}{reverse}]"


def finding_fails(finding: Finding, fail_on: tuple[str, ...] = DEFAULT_FAIL_ON) -> bool:
    """Whether ``fail_on`` fails on ``finding``: an error of a status it names (every failing
    status raises one), a recurrence not measured (``unmeasured-recurrence``), any part not
    measured (``incomplete``); never an ignored finding."""
    if finding.ignored:
        return False
    if finding.kind == NOT_MEASURED:
        recurrence = finding.severity == Severity.ERROR and UNMEASURED_RECURRENCE in fail_on
        return recurrence or INCOMPLETE in fail_on
    return finding.severity == Severity.ERROR and finding.kind in fail_on


def places(finding: Finding) -> set[str]:
    """Where a finding is, as ``--ignore id:where`` names it: the module of a core, ``depth``
    for the stack, ``sequence`` for the sequence view, each module a coverage finding names."""
    where = finding.where
    found = {str(where[key]) for key in ("module", "stack", "view") if where.get(key) is not None}
    if where.get("module") == "":
        found.add("(model)")  # a recurrent module that is the whole model
    found |= {str(module).split(" (")[0] for module in where.get("modules", [])}
    return found


def ignore_matches(pattern: str, finding: Finding) -> bool:
    """Whether ``--ignore pattern`` (a finding id, or ``id:where``) names ``finding``."""
    finding_id, _, where = pattern.partition(":")
    return finding_id == finding.id and (not where or where in places(finding))


class GradientHealthError(AssertionError):
    """Raised by :meth:`Report.assert_healthy`; its message is the diagnosis."""


@dataclass
class BaselineChange:
    """One number of a part before (the baseline) and after (this run), and whether it got
    worse beyond the tolerance."""

    where: str
    metric: str
    before: float | None
    after: float | None
    worse: bool


@dataclass
class BaselineComparison:
    """This run against a saved report: the file, the tolerance, every change."""

    path: str
    tolerance: float
    changes: list[BaselineChange] = field(default_factory=list)


@dataclass
class Report:
    """Everything gradscope found about one model."""

    status: str
    settings: Settings
    model: ModelDescription
    gradscope_version: str
    input_grad_norm: list[float] | None = None
    sequence: SequenceGradient | None = None
    recurrent: list[RecurrentCore] = field(default_factory=list)
    layers: list[DepthLayer] = field(default_factory=list)
    stack: DepthStack | None = field(default=None, metadata={"json": "depth"})
    findings: list[Finding] = field(default_factory=list)
    fixes: list[Fix] = field(default_factory=list)
    coverage: Coverage | None = None
    baseline: BaselineComparison | None = None
    numerics: Numerics | None = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The JSON contract as a dict; non-finite numbers become ``None``."""
        data = to_data(self)
        order = ["schema_version", "gradscope_version", "status", "settings", "model"]
        return {key: data.pop(key) for key in order} | data

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON text (schema_version 1)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def to_html(self) -> str:
        """The report as one self-contained HTML page (what ``--html`` writes)."""
        from gradscope.render.html import page_of

        return page_of(self)

    def plot(self) -> Any:
        """The report's figures as a matplotlib figure (the ``plot`` extra)."""
        from gradscope.render.plot import figure

        return figure(self)

    def _repr_html_(self) -> str:
        """The report's sections as HTML, for Jupyter: verdict, tables, charts, fixes."""
        from gradscope.render.html import body

        return body(self)

    def deciding_core(self) -> RecurrentCore | None:
        """The core behind the overall status: the worst, then the shortest horizon."""
        if not self.recurrent:
            return None

        def badness(core: RecurrentCore) -> tuple[int, float]:
            tau = core.memory_horizon
            return Status(core.status).rank, -(math.inf if tau is None else tau)

        return max(self.recurrent, key=badness)

    @property
    def complete(self) -> bool:
        """Whether every module with parameters was measured."""
        return self.coverage is None or self.coverage.complete

    def fails(self, fail_on: tuple[str, ...] = DEFAULT_FAIL_ON) -> bool:
        """Whether ``fail_on`` fails on one of the findings (:func:`finding_fails`)."""
        return any(finding_fails(finding, fail_on) for finding in self.findings)

    def ignoring(self, patterns: Sequence[str]) -> Report:
        """This report with the findings ``patterns`` name (``--ignore``) marked ignored:
        they stay listed, and no longer fail."""
        findings = [
            dataclasses.replace(f, ignored=f.ignored or any(ignore_matches(p, f) for p in patterns))
            for f in self.findings
        ]
        return dataclasses.replace(self, findings=findings)

    def summary(self) -> str:
        """The diagnosis in a few plain lines."""
        lines = [f"gradscope: {self.status}{'' if self.complete else ' in what was measured'}"]
        lines += [f"- [{f.kind}] {f.message}" for f in self.findings]
        if self.fixes:
            lines.append("fixes: " + ", ".join(fix.id for fix in self.fixes))
        return "\n".join(lines)

    def assert_healthy(self) -> None:
        """Raise :class:`GradientHealthError` with the diagnosis unless every part is healthy
        and no recurrence was left unmeasured."""
        if self.fails(DEFAULT_FAIL_ON):
            raise GradientHealthError(self.summary())

    def assert_no_regression(self, baseline: str, tolerance: float | None = None) -> None:
        """Raise :class:`GradientHealthError` naming every part worse than in the JSON report
        saved at ``baseline`` beyond ``tolerance`` (default 0.2), before -> after."""
        from gradscope.baseline import (
            DEFAULT_TOLERANCE,
            compare,
            load_baseline,
            regression_findings,
        )

        tolerance = DEFAULT_TOLERANCE if tolerance is None else tolerance
        comparison = compare(self, load_baseline(baseline), str(baseline), tolerance)
        worse = regression_findings(comparison)
        if worse:
            lines = [f"gradscope: worse than the baseline {baseline}"]
            lines += [f"- [{finding.id}] {finding.message}" for finding in worse]
            raise GradientHealthError("\n".join(lines))


def named(names: list[str], limit: int = 4) -> str:
    """``a, b, c, d and 5 more``: at most ``limit`` names of a long list."""
    shown = ", ".join(names[:limit])
    more = len(names) - limit
    return f"{shown} and {more} more" if more > 0 else shown


def to_data(value: Any) -> Any:
    """Plain JSON data: dataclasses as dicts (without INTERNAL fields, keys renamed by a field's
    ``json`` metadata), words as text, tuples as lists, non-finite numbers as ``None``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            item.metadata.get("json", item.name): to_data(getattr(value, item.name))
            for item in dataclasses.fields(value)
            if item.metadata.get("json", True) is not False
        }
    if isinstance(value, Word):
        return value.value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: to_data(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_data(item) for item in value]
    return value
