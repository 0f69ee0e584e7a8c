"""Watching a model's gradient horizon during training: :class:`Monitor`, called from a plain
PyTorch loop, analyses a copy of the model every N steps on the same probe, and keeps the
series (and writes it as JSON lines that ``gradscope compare`` reads)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gradscope.report import Report


class Monitor:
    """Analyse ``model`` every ``every`` steps during training.

    ``monitor.step(global_step)`` analyses a copy of the model, in eval mode, on the probe the
    options build (the same seed every time, so that the series compares like with like); the
    model itself, its gradients, its training mode and the random number generators are left
    as they were. ``path``: a ``.jsonl`` file each report is appended to, with its ``step``.
    Other keywords are :func:`gradscope.analyze`'s options; fixes are not measured on every
    analysis unless ``what_if=True`` (each would cost about one more analysis).
    """

    def __init__(
        self,
        model: Any,
        every: int = 100,
        path: str | Path | None = None,
        example_input: Any = None,
        **options: Any,
    ) -> None:
        if every < 1:
            from gradscope.errors import GradscopeError

            raise GradscopeError(f"Monitor(every={every}): analyse every 1 step or more")
        self.model = model
        self.every = every
        self.path = Path(path) if path is not None else None
        self.example_input = example_input
        self.options = {"what_if": False, **options}
        self.series: list[tuple[int, Report]] = []

    def step(self, global_step: int) -> Report | None:
        """Analyse at every ``every``-th step (and step 0); the report, else None."""
        if global_step % self.every:
            return None
        report = self.analyze_now()
        self.series.append((global_step, report))
        if self.path is not None:
            line = json.dumps({"step": global_step, **report.to_dict()}, allow_nan=False)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(line + "\n")
        return report

    def analyze_now(self) -> Report:
        """One analysis of the model as it is now, leaving it and the random state alone."""
        import torch

        from gradscope.api import analyze

        with torch.random.fork_rng(devices=_devices(self.model)):
            return analyze(self.model, self.example_input, **self.options)

    def horizons(self) -> dict[str, list[tuple[int, float | None]]]:
        """Each core's memory horizon at every step analysed."""
        found: dict[str, list[tuple[int, float | None]]] = {}
        for step, report in self.series:
            for core in report.recurrent:
                found.setdefault(core.label, []).append((step, core.memory_horizon))
        return found


def _devices(model: Any) -> list[int]:
    """The CUDA devices whose random state the analysis could touch: the model's."""
    devices = {p.device.index for p in getattr(model, "parameters", list)() if p.is_cuda}
    return sorted(index for index in devices if index is not None)
