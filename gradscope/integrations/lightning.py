"""A PyTorch Lightning callback that watches the gradient horizon during training.

``GradscopeCallback(every_n_epochs=1)`` analyses a copy of the LightningModule (or of the
submodule named by ``module``) as :class:`gradscope.Monitor` does, at the end of every N-th
training epoch or every N-th optimizer step, and logs to the trainer's loggers:
``gradscope/<core>/horizon``, ``gradscope/<core>/lambda_1``, ``gradscope/<core>/status``,
``gradscope/depth/decades`` and ``gradscope/depth/status`` for a stack, and
``gradscope/status`` overall. A status is logged as its rank, since loggers take numbers:
0 healthy, 1 vanishing, 2 exploding, 3 nonfinite. An infinite horizon (nothing decays) is
logged as ``inf``.

Lightning is optional: ``pip install "gradscope[lightning]"``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the older package name
    try:
        from pytorch_lightning.callbacks import Callback
    except ImportError:
        raise ImportError(
            "gradscope's Lightning callback needs PyTorch Lightning: "
            'pip install "gradscope[lightning]"'
        ) from None

from gradscope.monitor import Monitor
from gradscope.report import Report, Status


def metrics(report: Report) -> dict[str, float]:
    """The numbers the callback logs for one report, by metric name."""
    found: dict[str, float] = {"gradscope/status": float(Status(report.status).rank)}
    for core in report.recurrent:
        prefix = f"gradscope/{core.label}"
        horizon = core.memory_horizon
        found[f"{prefix}/horizon"] = math.inf if horizon is None else float(horizon)
        found[f"{prefix}/lambda_1"] = float(core.top_exponent)
        found[f"{prefix}/status"] = float(Status(core.status).rank)
    if report.stack is not None:
        found["gradscope/depth/decades"] = float(report.stack.decades)
        found["gradscope/depth/status"] = float(Status(report.stack.status).rank)
    return found


class GradscopeCallback(Callback):
    """Analyse the model every ``every_n_epochs`` epochs (at each one's end) or, when given,
    every ``every_n_steps`` optimizer steps, and log the numbers.

    ``module``: the attribute path of the network inside the LightningModule (``"model"``),
    by default the LightningModule itself. ``example_input``: the probe; by default the
    module's ``example_input_array`` when it has one. ``path``: a ``.jsonl`` file the reports
    are appended to, which ``gradscope compare`` reads. Other keywords are
    :func:`gradscope.analyze`'s options (fixes are not measured unless ``what_if=True``).
    The series is kept in ``callback.monitor.series``.
    """

    def __init__(
        self,
        every_n_epochs: int | None = 1,
        every_n_steps: int | None = None,
        module: str | None = None,
        example_input: Any = None,
        path: str | Path | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        self.every_n_epochs = None if every_n_steps else every_n_epochs
        self.every_n_steps = every_n_steps
        self.module = module
        self.monitor = Monitor(None, every=1, path=path, example_input=example_input, **options)
        self._last_step: int | None = None

    def _analyse(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero or trainer.global_step == self._last_step:
            return  # one analysis per optimizer step, whatever the gradient accumulation
        self._last_step = trainer.global_step
        model = pl_module.get_submodule(self.module) if self.module else pl_module
        self.monitor.model = model
        if self.monitor.example_input is None and not self.module:
            self.monitor.example_input = getattr(pl_module, "example_input_array", None)
        report = self.monitor.step(trainer.global_step)
        if report is None:
            return
        for logger in trainer.loggers:
            logger.log_metrics(metrics(report), step=trainer.global_step)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._analyse(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self._analyse(trainer, pl_module)
