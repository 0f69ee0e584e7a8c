"""Checkpoints compared: the same parts of several reports (a fix's before and after, the
epochs of a training run) side by side, as series. Reads reports as their JSON dicts, so that
saved reports and fresh analyses compare alike. Plain data: no torch."""

from __future__ import annotations

import glob
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradscope.errors import GradscopeError
from gradscope.report import FAILING_STATUSES, SCHEMA_VERSION, core_label


@dataclass
class PartSeries:
    """One part (a core, the stack, the sequence view) across the inputs: its rate metric,
    its reach metric and its status at each (None where the part is absent)."""

    name: str
    kind: str
    rate_metric: str
    reach_metric: str
    rates: list[float | None] = field(default_factory=list)
    reaches: list[float | None] = field(default_factory=list)
    statuses: list[str | None] = field(default_factory=list)

    @property
    def present(self) -> list[bool]:
        """Whether the part is in each input."""
        return [status is not None for status in self.statuses]


@dataclass
class Comparison:
    """The inputs in order (their names), every part's series, and what appeared or
    disappeared between them."""

    inputs: list[str]
    parts: list[PartSeries]
    notes: list[str] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list, metadata={"json": False})

    @property
    def last_status(self) -> str:
        """The last input's overall status."""
        return str(self.reports[-1].get("status", "healthy")) if self.reports else "healthy"

    def fails(self) -> bool:
        """Whether the last input is vanishing, exploding or nonfinite."""
        return self.last_status in FAILING_STATUSES

    def to_dict(self) -> dict[str, Any]:
        """The comparison as JSON: the series and every input's report."""
        return {
            "schema_version": SCHEMA_VERSION,
            "inputs": [
                {"name": name, "report": report}
                for name, report in zip(self.inputs, self.reports, strict=True)
            ],
            "series": [
                {
                    "part": part.name,
                    "kind": part.kind,
                    part.rate_metric: part.rates,
                    part.reach_metric: part.reaches,
                    "status": part.statuses,
                }
                for part in self.parts
            ],
            "notes": self.notes,
        }


def _rows(
    report: dict[str, Any],
) -> dict[str, tuple[str, str, str, float | None, float | None, str]]:
    """Every part of one report: label -> (kind, rate metric, reach metric, rate, reach,
    status)."""
    rows = {}
    for core in report.get("recurrent") or []:
        exponents = core.get("lyapunov") or [None]
        rows[core_label(core)] = (
            core.get("cell", ""),
            "lambda_1",
            "memory_horizon",
            exponents[0],
            core.get("memory_horizon"),
            core.get("status", "healthy"),
        )
    depth = report.get("depth")
    if depth:
        rows["depth"] = (
            f"{depth.get('blocks')} blocks",
            "decades",
            "blocks",
            depth.get("decades"),
            depth.get("blocks"),
            depth.get("status", "healthy"),
        )
    sequence = report.get("sequence")
    if sequence:
        rows["sequence"] = (
            "sequence view",
            "grad_norm_at_lag_0",
            "effective_horizon",
            (sequence.get("grad_norm_by_lag") or [None])[0],
            sequence.get("effective_horizon"),
            sequence.get("status", "healthy"),
        )
    return rows


def compare(named: list[tuple[str, dict[str, Any]]]) -> Comparison:
    """The series of every part across the reports ``named`` (name, JSON dict), in order;
    parts matched by name, first seen first."""
    every = [_rows(report) for _, report in named]
    labels = list(dict.fromkeys(label for rows in every for label in rows))
    parts = []
    for label in labels:
        first = next(rows[label] for rows in every if label in rows)
        part = PartSeries(label, first[0], first[1], first[2])
        for rows in every:
            row = rows.get(label)
            part.rates.append(None if row is None else row[3])
            part.reaches.append(None if row is None else row[4])
            part.statuses.append(None if row is None else row[5])
        parts.append(part)
    notes = []
    names = [name for name, _ in named]
    for part in parts:
        present = part.present
        if not all(present):
            seen = [name for name, here in zip(names, present, strict=True) if here]
            notes.append(f"{part.name} is only in {', '.join(seen)}")
    return Comparison(names, parts, notes, [report for _, report in named])


def natural_key(text: str) -> list[int | str]:
    """A sort key that orders numbers by value: ``epoch-2`` before ``epoch-10``."""
    return [int(piece) if piece.isdigit() else piece for piece in re.split(r"(\d+)", text)]


def read_reports(path: str) -> list[tuple[str, dict[str, Any]]] | None:
    """The JSON reports saved at ``path``, named: one for a ``.json`` report, one per line
    of a ``.jsonl`` series (named by its ``step``); None for a file that is not JSON (a
    checkpoint to analyse)."""
    suffix = Path(path).suffix
    if suffix not in (".json", ".jsonl"):
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
        if suffix == ".json":
            documents = [json.loads(text)]
        else:
            documents = [json.loads(line) for line in text.splitlines() if line.strip()]
    except FileNotFoundError:
        raise GradscopeError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise GradscopeError(f"{path}: not a gradscope JSON report ({error})") from None
    if not all(isinstance(d, dict) and "schema_version" in d for d in documents):
        raise GradscopeError(f"{path}: not a gradscope JSON report (--format json)")
    if suffix == ".json":
        return [(path, documents[0])]
    return [(f"{path}@{d.get('step', i)}", d) for i, d in enumerate(documents)]


def expanded(patterns: list[str]) -> list[str]:
    """The inputs in the order given, each quoted glob pattern (``"ckpts/epoch-*.pt"``)
    expanded in natural order; a pattern that matches nothing stays as it is."""
    found: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern), key=natural_key) if glob.has_magic(pattern) else []
        found += matches or [pattern]
    return found
