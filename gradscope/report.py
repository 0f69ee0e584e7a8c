"""The report: plain data that every renderer reads and ``--format json`` writes (schema 1)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1
#: Statuses from best to worst; the overall status is the worst of the parts.
STATUSES = ("healthy", "vanishing", "exploding", "nonfinite")
FAILING_STATUSES = STATUSES[1:]


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
    jacobian: dict[str, Any]
    status: str = "healthy"
    horizon: int = 0
    burn_in: int = 0
    proj_size: int = 0
    num_layers: int = 1
    bidirectional: bool = False
    batch_first: bool = False
    is_cell: bool = False
    gates: dict[str, Any] | None = None
    weights: dict[str, Any] | None = None
    finite: bool = True

    @property
    def label(self) -> str:
        """A short human name: ``encoder``, ``encoder[l1 reverse]``."""
        name = self.name or "(model)"
        if self.is_cell or (self.num_layers == 1 and not self.bidirectional):
            return name
        reverse = " reverse" if self.direction == "reverse" else ""
        return f"{name}[l{self.layer}{reverse}]"

    @property
    def top_exponent(self) -> float:
        """lambda_1, the largest Lyapunov exponent (NaN when unmeasured)."""
        return self.lyapunov[0] if self.lyapunov else math.nan

    @property
    def grad_norm_by_lag(self) -> list[float]:
        """``grad_norm`` by lag: steps before the last time step, where the loss reads."""
        return self.grad_norm[::-1]


@dataclass
class Finding:
    """One diagnosis: what is wrong, where, by how much, and which fixes apply."""

    id: str
    kind: str
    severity: str
    where: dict[str, Any]
    message: str
    fixes: list[str] = field(default_factory=list)


@dataclass
class Fix:
    """One remedy, with why it applies and a snippet that fits the model at hand."""

    id: str
    title: str
    detail: str
    snippet: str


class GradientHealthError(AssertionError):
    """Raised by :meth:`Report.assert_healthy`; its message is the diagnosis."""


@dataclass
class Report:
    """Everything gradscope found about one model."""

    status: str
    settings: dict[str, Any]
    model: dict[str, Any]
    gradscope_version: str
    input_grad_norm: list[float] | None = None
    recurrent: list[RecurrentCore] = field(default_factory=list)
    layers: list[dict[str, Any]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    fixes: list[Fix] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The JSON contract as a dict; non-finite numbers become ``None``."""
        data = dataclasses.asdict(self)
        order = ["schema_version", "gradscope_version", "status", "settings", "model"]
        ordered = {key: data.pop(key) for key in order} | data
        return _finite_or_none(ordered)

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON text (schema_version 1)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def deciding_core(self) -> RecurrentCore | None:
        """The core behind the overall status: the worst, then the shortest horizon."""
        if not self.recurrent:
            return None

        def badness(core: RecurrentCore) -> tuple[int, float]:
            tau = core.memory_horizon
            return STATUSES.index(core.status), -(math.inf if tau is None else tau)

        return max(self.recurrent, key=badness)

    def fails(self, fail_on: tuple[str, ...] = FAILING_STATUSES) -> bool:
        """Whether any part's status is one of ``fail_on``."""
        statuses = {core.status for core in self.recurrent} | {self.status}
        statuses |= {layer.get("status", "healthy") for layer in self.layers}
        return bool(statuses & set(fail_on))

    def summary(self) -> str:
        """The diagnosis in a few plain lines."""
        lines = [f"gradscope: {self.status}"]
        lines += [f"- [{f.kind}] {f.message}" for f in self.findings]
        if self.fixes:
            lines.append("fixes: " + ", ".join(fix.id for fix in self.fixes))
        return "\n".join(lines)

    def assert_healthy(self) -> None:
        """Raise :class:`GradientHealthError` with the diagnosis unless every part is healthy."""
        if self.status != "healthy":
            raise GradientHealthError(self.summary())


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(item) for item in value]
    return value
