"""``--plot FILE`` and ``Report.plot()``: the report's figures with matplotlib (the ``plot``
extra), imported only here and only when asked for.

One figure: per recurrent core its gradient against lag (log scale, the horizon and the
1/epsilon level marked) beside its Lyapunov spectrum; for a depth stack its gradient and gain
against depth; for the sequence view the input gradient against lag. Series differ by marker
and line style as well as colour. Only drawing: the numbers come from the report.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from gradscope.errors import GradscopeError
from gradscope.report import Report

#: What ``--plot`` writes, by the file's suffix.
PLOT_SUFFIXES = (".png", ".svg", ".pdf")
MISSING = (
    'plotting needs matplotlib: pip install "gradscope[plot]" (or use --html, which needs '
    "nothing more)"
)


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib import pyplot
    except ImportError:
        raise GradscopeError(MISSING) from None
    return pyplot


def _finite(values: list[float | None]) -> tuple[list[int], list[float]]:
    points = [(i, v) for i, v in enumerate(values) if v is not None and math.isfinite(v) and v > 0]
    return [i for i, _ in points], [v for _, v in points]


def _panels(report: Report) -> list[str]:
    panels = [f"core:{i}" for i in range(len(report.recurrent))]
    if report.stack is not None and report.layers:
        panels.append("depth")
    if report.sequence is not None and report.sequence.grad_norm_by_lag:
        panels.append("sequence")
    return panels


def figure(report: Report) -> Any:
    """The report's figures as one matplotlib figure (a row of two axes per panel)."""
    pyplot = _pyplot()
    panels = _panels(report)
    if not panels:
        raise GradscopeError("the report has no core, stack or sequence view to plot")
    fig, axes = pyplot.subplots(len(panels), 2, figsize=(11, 3.2 * len(panels)), squeeze=False)
    epsilon = report.settings.epsilon
    for row, panel in zip(axes, panels, strict=True):
        left, right = row
        if panel.startswith("core:"):
            core = report.recurrent[int(panel.split(":")[1])]
            x, y = _finite(core.grad_norm_by_lag)
            left.semilogy(x, y, marker="o", markersize=3, linestyle="-", label=core.label)
            if core.distance:
                left.axvline(core.distance, linestyle="--", color="0.4", label="horizon")
            horizon = core.memory_horizon
            if horizon is not None and math.isfinite(horizon):
                left.axvline(
                    horizon, linestyle="-.", color="0.2", label=f"memory horizon {horizon:.1f}"
                )
            if y and core.grad_norm_by_lag[0]:
                level = core.grad_norm_by_lag[0] * epsilon
                left.axhline(
                    level, linestyle=":", color="0.4", label=f"lag 0 x epsilon ({epsilon:g})"
                )
            zeros = sum(1 for v in core.grad_norm_by_lag if v == 0)
            if zeros:
                left.text(
                    0.3,
                    0.5,
                    f"exactly 0 at {zeros} lags (not drawn on a log scale)",
                    transform=left.transAxes,
                    fontsize=8,
                )
            left.set(
                title=f"{core.label}: ‖dL/ds‖ against lag ({core.status})",
                xlabel="lag (steps before the last)",
                ylabel="‖dL/ds‖",
            )
            left.legend(fontsize=8)
            exponents = [v if math.isfinite(v) else 0.0 for v in core.lyapunov]
            right.bar(
                range(1, len(exponents) + 1), exponents, color="#1f77b4", edgecolor="k", hatch="//"
            )
            right.axhline(0, color="k", linewidth=0.8)
            right.set(
                title=f"{core.label}: Lyapunov spectrum", xlabel="exponent", ylabel="nats per step"
            )
        elif panel == "depth":
            x, y = _finite([layer.grad_norm for layer in report.layers])
            left.semilogy([i + 1 for i in x], y, marker="s", markersize=3, linestyle="-")
            left.set(
                title=f"depth stack: ‖dL/da‖ ({report.stack.status})",
                xlabel="block (input side first)",
                ylabel="‖dL/da‖",
            )
            x, y = _finite([layer.gain for layer in report.layers])
            right.semilogy([i + 1 for i in x], y, marker="^", markersize=3, linestyle="--")
            right.axhline(1.0, linestyle=":", color="0.4")
            right.set(title="gain per block", xlabel="block (input side first)", ylabel="gain")
        else:
            sequence = report.sequence
            x, y = _finite(sequence.grad_norm_by_lag)
            left.semilogy(x, y, marker="d", markersize=3, linestyle="-.")
            if sequence.distance:
                left.axvline(sequence.distance, linestyle="--", color="0.4")
            left.set(
                title=f"sequence view: ‖dL/dx‖ against lag ({sequence.status})",
                xlabel="lag",
                ylabel="‖dL/dx‖",
            )
            right.axis("off")
    fig.suptitle(f"gradscope: {report.model.path or report.model.class_name} ({report.status})")
    fig.tight_layout()
    return fig


def check_plot_path(path: str) -> None:
    """Refuse a ``--plot`` file matplotlib is not asked to write, before any work."""
    if Path(path).suffix.lower() not in PLOT_SUFFIXES:
        raise GradscopeError(f"--plot {path}: give a file ending in .png, .svg or .pdf")


def save(report: Report, path: str) -> None:
    """Write the report's figure to ``path`` (PNG, SVG or PDF, by its suffix)."""
    check_plot_path(path)
    fig = figure(report)
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    except OSError as error:
        raise GradscopeError(f"--plot {path}: cannot write it ({error.strerror})") from None
    finally:
        _pyplot().close(fig)
