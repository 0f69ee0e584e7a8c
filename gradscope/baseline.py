"""Baselines: this run against a saved JSON report of the same model, so that a model whose
gradients got worse fails before its status does.

A core is worse when its memory horizon fell by more than the tolerance (a fraction); the
stack when its gradient change over depth grew by more than the tolerance (in decades, and by
at least :data:`MIN_DECADES`); the sequence view when its effective horizon fell so. λ1 is
shown beside the horizon it sets. Plain data: no torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from gradscope.errors import GradscopeError
from gradscope.report import (
    REGRESSION,
    BaselineChange,
    BaselineComparison,
    Evidence,
    Finding,
    Report,
    Severity,
)

#: The default tolerance: a horizon 20 % shorter, or 20 % more decades, is a regression.
DEFAULT_TOLERANCE = 0.2
#: A change over depth smaller than this many decades is never a regression (noise).
MIN_DECADES = 0.1


def load_baseline(path: str | Path) -> dict[str, Any]:
    """The JSON report saved at ``path``; one line when it is missing or not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GradscopeError(
            f"--baseline {path}: no such file; write one with --update-baseline"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise GradscopeError(f"--baseline {path}: not a JSON report ({error})") from None
    if not isinstance(data, dict) or "schema_version" not in data:
        raise GradscopeError(f"--baseline {path}: not a gradscope JSON report (--format json)")
    return data


def _key(core: dict[str, Any]) -> str:
    name = core.get("name") or "(model)"
    return f"{name} l{core.get('layer', 0)} {core.get('direction', 'forward')}"


def _horizon(value: float | None) -> float:
    """A memory horizon, None (no decay at all) read as infinite."""
    return math.inf if value is None else float(value)


def _shorter(before: float, after: float, tolerance: float) -> bool:
    return after < before * (1 - tolerance)


def compare(
    report: Report, baseline: dict[str, Any], path: str, tolerance: float = DEFAULT_TOLERANCE
) -> BaselineComparison:
    """Every core, the stack and the sequence view against ``baseline``; a baseline of
    another model (other cores, a stack where there is none) is refused in one line."""
    if not 0 <= tolerance < 1:
        raise GradscopeError(
            f"--regression-tolerance must lie in [0, 1) (a fraction, e.g. 0.2), not {tolerance}"
        )
    _same_settings(report, baseline, path)
    before = {_key(core): core for core in baseline.get("recurrent") or []}
    now = {_key(dataclasses.asdict(core)): core for core in report.recurrent}
    kinds = {key: core.get("cell") for key, core in before.items()}
    parameters = (baseline.get("model") or {}).get("parameters")
    if parameters not in (None, report.model.parameters) or any(
        kinds.get(key) not in (None, core.cell) for key, core in now.items()
    ):
        theirs = ", ".join(f"{key} ({kind})" for key, kind in kinds.items()) or "no cores"
        ours = ", ".join(f"{key} ({core.cell})" for key, core in now.items()) or "no cores"
        raise GradscopeError(
            f"--baseline {path} is a report of another model: {parameters} parameters, "
            f"{theirs}; this model has {report.model.parameters}, {ours} (write a new one "
            "with --update-baseline)"
        )
    if set(before) != set(now) or (baseline.get("depth") is None) != (report.stack is None):
        theirs = ", ".join(before) or "none"
        ours = ", ".join(now) or "none"
        raise GradscopeError(
            f"--baseline {path} is a report of another model: its cores are {theirs} and "
            f"{'a' if baseline.get('depth') else 'no'} stack; this model's are {ours} and "
            f"{'a' if report.stack else 'no'} stack (write a new one with --update-baseline)"
        )
    changes = []
    for key, core in now.items():
        old = before[key]
        old_tau, new_tau = _horizon(old.get("memory_horizon")), _horizon(core.memory_horizon)
        old_lambda = (old.get("lyapunov") or [None])[0]
        changes.append(BaselineChange(core.label, "lambda_1", old_lambda, core.top_exponent, False))
        changes.append(
            BaselineChange(
                core.label,
                "memory_horizon",
                old.get("memory_horizon"),
                core.memory_horizon,
                _shorter(old_tau, new_tau, tolerance),
            )
        )
    if report.stack is not None:
        old_decades = float(baseline["depth"].get("decades") or 0.0)
        new_decades = report.stack.decades
        grown = abs(new_decades) - abs(old_decades)
        worse = grown > max(MIN_DECADES, tolerance * abs(old_decades))
        changes.append(BaselineChange("depth", "decades", old_decades, new_decades, worse))
    old_sequence, sequence = baseline.get("sequence"), report.sequence
    if old_sequence and sequence is not None:
        old_reach = old_sequence.get("effective_horizon")
        new_reach = sequence.effective_horizon
        worse = _shorter(_horizon(old_reach), _horizon(new_reach), tolerance)
        changes.append(BaselineChange("sequence", "effective_horizon", old_reach, new_reach, worse))
    return BaselineComparison(path, tolerance, changes)


#: Settings that change the numbers compared: a baseline must have been run with the same.
COMPARED_SETTINGS = ("epsilon", "dtype", "loss_at")


def _same_settings(report: Report, baseline: dict[str, Any], path: str) -> None:
    """Refuse a baseline measured with other settings than this run (a horizon depends on
    epsilon): the change would not be the model's."""
    theirs = baseline.get("settings") or {}
    for name in COMPARED_SETTINGS:
        ours = getattr(report.settings, name)
        if name in theirs and theirs[name] != ours:
            raise GradscopeError(
                f"--baseline {path} was measured with {name} {theirs[name]}, this run with "
                f"{ours}: compare runs with the same settings (or write a new baseline with "
                "--update-baseline)"
            )


def _percent(before: float | None, after: float | None) -> str:
    if before is None or after is None or not before:
        return ""
    return f", {100 * (after - before) / abs(before):+.0f}%"


def _where(change: BaselineChange, report: Report | None) -> dict[str, Any]:
    """Where a change is, as the finding on that part says it (a core by module, layer and
    direction)."""
    if change.where in ("depth", "sequence"):
        return {"stack": "depth"} if change.where == "depth" else {"view": "sequence"}
    for core in report.recurrent if report is not None else []:
        if core.label == change.where:
            return {"module": core.name, "layer": core.layer, "direction": core.direction}
    return {"module": change.where}


def regression_findings(
    comparison: BaselineComparison, report: Report | None = None
) -> list[Finding]:
    """One error finding per part that got worse than its baseline."""
    findings = []
    for change in comparison.changes:
        if not change.worse:
            continue
        before = "∞" if change.before is None else f"{change.before:.3g}"
        after = "∞" if change.after is None else f"{change.after:.3g}"
        reason = (
            f"{change.where}: {change.metric.replace('_', ' ')} {before} -> {after}"
            f"{_percent(change.before, change.after)} against the baseline {comparison.path} "
            f"(tolerance {100 * comparison.tolerance:.0f}%)"
        )
        findings.append(
            Finding(
                id=REGRESSION,
                kind=REGRESSION,
                severity=Severity.ERROR,
                where=_where(change, report),
                message=f"{reason}: the gradients got worse than in the baseline.",
                evidence=Evidence("baseline", None, reason),
            )
        )
    return findings


def against_baseline(report: Report, comparison: BaselineComparison) -> Report:
    """The report with the comparison and a regression finding for each part worse."""
    return dataclasses.replace(
        report,
        baseline=comparison,
        findings=[*regression_findings(comparison, report), *report.findings],
    )
