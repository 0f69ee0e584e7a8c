"""The ``gradscope`` command line. Torch is imported only once a command runs."""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from gradscope import __version__
from gradscope.baseline import DEFAULT_TOLERANCE
from gradscope.config import (
    ModelEntry,
    ProjectConfig,
    analysis_keywords,
    load_config,
    output_values,
    run_ignores,
)
from gradscope.errors import GradscopeError, first_line
from gradscope.options import DEFAULTS
from gradscope.render import FORMATS, Checked
from gradscope.render.delivery import Delivery, deliver
from gradscope.report import DEFAULT_FAIL_ON, FAIL_ON_CHOICES, FINDING_IDS, Report

try:  # recent typer releases vendor click
    from typer._click import exceptions as click_errors
    from typer._click.core import ParameterSource
except ImportError:  # pragma: no cover - older typer depends on click itself
    from click import exceptions as click_errors
    from click.core import ParameterSource

app = typer.Typer(
    name="gradscope",
    help="Measure whether gradients survive the distance a PyTorch model must learn across.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

ANALYSIS = "Analysis"
OUTPUT = "Output and exit codes"
LOADING = "Loading"


class _Debug:
    """Whether ``--debug`` was given: main() shows a traceback for internal errors then."""

    requested = False


def _remember_debug(value: bool) -> bool:
    _Debug.requested = _Debug.requested or value
    return value


DEBUG_OPTION = typer.Option(
    help="Show tracebacks of internal errors.", callback=_remember_debug, rich_help_panel=OUTPUT
)


IGNORE_OPTION = Annotated[
    list[str] | None,
    typer.Option(
        help="Silence a finding: its id, or id:where (a module, depth, sequence); repeatable. "
        "An ignored finding is still listed.",
        rich_help_panel=OUTPUT,
    ),
]
OUTPUT_OPTION = Annotated[
    str | None,
    typer.Option(
        help="Write the --format output to this file; the terminal shows the text report.",
        rich_help_panel=OUTPUT,
    ),
]
HTML_OPTION = Annotated[
    str | None,
    typer.Option(
        help="Also write a self-contained HTML report (charts inline, no network) to this file.",
        rich_help_panel=OUTPUT,
    ),
]
GITHUB_OPTION = Annotated[
    bool | None,
    typer.Option(
        "--github/--no-github",
        help="GitHub annotations and a step summary beside the text report \\[default: when "
        "GITHUB_ACTIONS=true].",
        show_default=False,
        rich_help_panel=OUTPUT,
    ),
]
CONFIG_OPTION = Annotated[
    str | None,
    typer.Option(
        help="A pyproject.toml or gradscope.toml to read \\[default: the nearest pyproject.toml].",
        show_default=False,
        rich_help_panel=OUTPUT,
    ),
]
FORMAT_HELP = "text, json, markdown, github (annotations), junit or html."


def _version(value: bool) -> None:
    if value:
        print(f"gradscope {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """gradscope: vanishing and exploding gradients in PyTorch models, measured."""


def parse_fail_on(text: str) -> tuple[str, ...]:
    """``vanishing,exploding`` -> ('vanishing', 'exploding'); unknown names are refused."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in FAIL_ON_CHOICES]
    if unknown or not names:
        raise GradscopeError(
            f"--fail-on {text!r}: choose from {','.join(FAIL_ON_CHOICES)} (comma-separated)"
        )
    return names


def check_format(output_format: str) -> str:
    """The output format, if gradscope knows it."""
    if output_format not in FORMATS:
        raise GradscopeError(f"--format {output_format!r}: choose one of {', '.join(FORMATS)}")
    return output_format


#: Without a terminal (a CI log), progress lines start once a run has lasted this many seconds:
#: long work shows what it is doing, short runs stay silent.
PLAIN_PROGRESS_AFTER = 3.0


@contextmanager
def progress_on_stderr() -> Iterator[Callable[[str], None]]:
    """A progress callback: a spinner on an interactive stderr; otherwise plain lines, once
    the run has lasted PLAIN_PROGRESS_AFTER seconds."""
    console = Console(stderr=True)
    if not console.is_terminal:
        started = time.monotonic()

        def plain(message: str) -> None:
            if time.monotonic() - started >= PLAIN_PROGRESS_AFTER:
                print(f"gradscope: {message}", file=sys.stderr, flush=True)

        yield plain
        return
    with console.status("gradscope: starting") as status:
        yield lambda message: status.update(f"gradscope: {message}")


def stdout_console() -> Console:
    """The console reports are written to (rich honours NO_COLOR and non-TTY output)."""
    return Console(soft_wrap=False)


@app.command()
def analyze(
    ctx: typer.Context,
    checkpoint: Annotated[
        str,
        typer.Argument(
            help="A checkpoint: torch.save (.pt, .pth, Lightning .ckpt), safetensors, "
            "TorchScript, torch.export (.pt2); sharded safetensors (folder or index), DCP folder; "
            "a Hugging Face folder (save_pretrained) or its config.json."
        ),
    ],
    model: Annotated[
        str | None,
        typer.Option(
            help="The class for a state_dict: package.module:Class or file.py:Class.",
            rich_help_panel=LOADING,
        ),
    ] = None,
    model_args: Annotated[
        str | None,
        typer.Option(
            help="JSON keyword arguments for --model, e.g. '{\"hidden_size\": 128}'.",
            rich_help_panel=LOADING,
        ),
    ] = None,
    trust: Annotated[
        bool,
        typer.Option(
            help="Load a file that holds code (unpickling runs it). Only for files you trust.",
            rich_help_panel=LOADING,
        ),
    ] = False,
    allow_global: Annotated[
        list[str] | None,
        typer.Option(
            help="Allow exactly this class (package.module:Class) in a weights-only load; "
            "repeatable.",
            rich_help_panel=LOADING,
        ),
    ] = None,
    nonlinearity: Annotated[
        str | None,
        typer.Option(
            help="tanh or relu, for vanilla RNNs rebuilt from weights alone \\[default: tanh].",
            show_default=False,
            rich_help_panel=LOADING,
        ),
    ] = None,
    device: Annotated[
        str, typer.Option(help="cpu, cuda, cuda:N, mps or auto.", rich_help_panel=LOADING)
    ] = DEFAULTS.device,
    probe: Annotated[
        str,
        typer.Option(
            help="gaussian, zeros, or a tensor file (.pt/.npy) shaped as the input; a .pt "
            "file may hold a dict, tuple or list of tensors for several inputs.",
            rich_help_panel=ANALYSIS,
        ),
    ] = DEFAULTS.probe,
    steps: Annotated[
        int | None,
        typer.Option(
            help="Probe length T \\[default: 100; an exported program's example length].",
            show_default=False,
            rich_help_panel=ANALYSIS,
        ),
    ] = None,
    batch: Annotated[
        int | None,
        typer.Option(
            help="Probe sequences; statistics pool them \\[default: 1].",
            show_default=False,
            rich_help_panel=ANALYSIS,
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Seed of probe, loss and frames.", rich_help_panel=ANALYSIS)
    ] = DEFAULTS.seed,
    dtype: Annotated[
        str | None,
        typer.Option(
            help="float64, float32, float16 or bfloat16 (the last two: the traced forward and "
            "backward pass, NaN/Inf origins and headroom in that dtype; Jacobians in float32). "
            "Default: float64, or the dtype a Hugging Face config names.",
            rich_help_panel=ANALYSIS,
            show_default=False,
        ),
    ] = DEFAULTS.dtype,
    input_shape: Annotated[
        list[str] | None,
        typer.Option(
            metavar="SHAPE",
            help="Full input shape, e.g. 1,100,32, where it cannot be inferred; once per "
            "input for a model called with several (name=4,50 for a keyword).",
            rich_help_panel=ANALYSIS,
        ),
    ] = None,
    batch_first: Annotated[
        bool | None,
        typer.Option(
            "--batch-first/--time-major",
            help="Input layout (batch, steps, ...) or (steps, batch, ...) \\[default: as the "
            "first recurrent module says; batch-first for cells].",
            show_default=False,
            rich_help_panel=ANALYSIS,
        ),
    ] = None,
    output_key: Annotated[
        str | None,
        typer.Option(
            help="Which output the loss reads: a dict key, field or tuple index \\[default: "
            "logits, else the first differentiable tensor].",
            show_default=False,
            rich_help_panel=ANALYSIS,
        ),
    ] = None,
    cell: Annotated[
        list[str] | None,
        typer.Option(
            help="Module path of a custom recurrent cell, forward(input, state) -> state; "
            "repeatable.",
            rich_help_panel=ANALYSIS,
        ),
    ] = None,
    detect_cells: Annotated[
        bool,
        typer.Option(
            "--detect-cells/--no-detect-cells",
            help="Find modules the model loops as recurrent cells and step them as --cell would.",
            rich_help_panel=ANALYSIS,
        ),
    ] = DEFAULTS.detect_cells,
    loss_at: Annotated[
        str,
        typer.Option(
            help="The time step the sequence view's loss reads: last, all, or a step number "
            "(negative from the end).",
            rich_help_panel=ANALYSIS,
        ),
    ] = str(DEFAULTS.loss_at),
    what_if: Annotated[
        bool,
        typer.Option(
            "--what-if/--no-what-if",
            help="Apply each fix gradscope can to a copy of the model and measure its effect "
            "(about one more analysis per such fix).",
            rich_help_panel=ANALYSIS,
        ),
    ] = DEFAULTS.what_if,
    depth: Annotated[
        str,
        typer.Option(
            help="Block granularity of the depth view: blocks (containers expanded, "
            "activations joined to their layer), leaves, or N levels of modules.",
            rich_help_panel=ANALYSIS,
        ),
    ] = DEFAULTS.granularity,
    chi_probes: Annotated[
        int,
        typer.Option(
            help="Random probes per block for chi (Hutchinson).", rich_help_panel=ANALYSIS
        ),
    ] = DEFAULTS.chi_probes,
    power_iterations: Annotated[
        int,
        typer.Option(help="Power iterations for each block's sigma_max.", rich_help_panel=ANALYSIS),
    ] = DEFAULTS.power_iterations,
    horizon: Annotated[
        int | None,
        typer.Option(
            help="Distance L the model must learn across \\[default: the steps each core "
            "ran, at most the probe length].",
            rich_help_panel=ANALYSIS,
        ),
    ] = None,
    epsilon: Annotated[
        float,
        typer.Option(
            help="Verdict tolerance: a change by 1/epsilon within L fails.",
            rich_help_panel=ANALYSIS,
        ),
    ] = DEFAULTS.epsilon,
    burn_in: Annotated[
        int | None,
        typer.Option(
            help="Steps before Lyapunov averaging \\[default: 20% of steps, at most 20].",
            rich_help_panel=ANALYSIS,
        ),
    ] = None,
    exponents: Annotated[
        int, typer.Option(help="How many Lyapunov exponents.", rich_help_panel=ANALYSIS)
    ] = DEFAULTS.exponents,
    spectrum_steps: Annotated[
        str,
        typer.Option(
            help="Steps with full Jacobian spectra: auto, all or N.", rich_help_panel=ANALYSIS
        ),
    ] = str(DEFAULTS.spectrum_steps),
    only: Annotated[
        list[str] | None,
        typer.Option(
            help="Measure only the recurrent modules or the run of blocks this names (a module "
            "path or a glob such as 'encoder.*'; repeatable): the rest are reported as left out.",
            rich_help_panel=ANALYSIS,
        ),
    ] = None,
    stream: Annotated[
        bool,
        typer.Option(
            "--stream/--no-stream",
            help="With --only, a Hugging Face folder's other weights are read from its files as "
            "the model runs, on the CPU (for models larger than memory); --no-stream loads "
            "the whole model, so that fixes can be measured on a copy.",
            rich_help_panel=ANALYSIS,
        ),
    ] = True,
    max_memory: Annotated[
        str | None,
        typer.Option(
            help="Memory for Jacobian work (e.g. 512MB, 4GB): larger work goes in chunks "
            "\\[default: 256MB].",
            rich_help_panel=ANALYSIS,
        ),
    ] = None,
    output_format: Annotated[
        str, typer.Option("--format", "-f", help=FORMAT_HELP, rich_help_panel=OUTPUT)
    ] = "text",
    fail_on: Annotated[
        str,
        typer.Option(
            help="What exits 1 (comma-separated): statuses; unmeasured-recurrence (a recurrence "
            "no view measured); incomplete (any module with parameters not measured).",
            rich_help_panel=OUTPUT,
        ),
    ] = ",".join(DEFAULT_FAIL_ON),
    exit_zero: Annotated[
        bool, typer.Option(help="Always exit 0 after a report.", rich_help_panel=OUTPUT)
    ] = False,
    ignore: IGNORE_OPTION = None,
    output: OUTPUT_OPTION = None,
    html: HTML_OPTION = None,
    plot: Annotated[
        str | None,
        typer.Option(
            help="Also draw the report's figures to this .png, .svg or .pdf file (needs the "
            'plot extra: pip install "gradscope[plot]").',
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    github: GITHUB_OPTION = None,
    config: CONFIG_OPTION = None,
    baseline: Annotated[
        str | None,
        typer.Option(
            help="A JSON report of the same model: exit 1 when a core, the stack or the "
            "sequence view got worse than in it beyond --regression-tolerance.",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    update_baseline: Annotated[
        bool,
        typer.Option(help="Write this run's JSON report to --baseline.", rich_help_panel=OUTPUT),
    ] = False,
    regression_tolerance: Annotated[
        float,
        typer.Option(
            help="How much worse than the baseline fails: a memory or effective horizon "
            "shorter by this fraction, or this fraction more decades over depth.",
            rich_help_panel=OUTPUT,
        ),
    ] = DEFAULT_TOLERANCE,
    debug: Annotated[bool, DEBUG_OPTION] = False,
) -> int:
    """Analyse CHECKPOINT: gradient norms over time, Jacobian spectra, Lyapunov exponents."""
    given = dict(locals())
    if plot:
        from gradscope.render.plot import check_plot_path

        check_plot_path(plot)
    explicit = explicit_parameters(ctx)
    project = load_config(Path(config) if config else None)
    failing = run_settings(given, explicit, project)
    if "baseline" in project.options and "baseline" not in explicit:
        given["baseline"] = project.options["baseline"]
    keywords = cli_keywords(given)
    keywords.update(analysis_keywords(project.options, explicit))
    from gradscope.api import analyze as run_analysis

    with progress_on_stderr() as progress:
        report = run_analysis(checkpoint, **keywords, progress=progress)
    report = finish(report, given, project, update_baseline)
    delivery = Delivery(
        given["output_format"], given["output"], given["github"], failing, given["html"]
    )
    deliver(report, delivery, stdout_console())
    if given["plot"]:
        from gradscope.render.plot import save

        save(report, given["plot"])
    return 0 if given["exit_zero"] or not report.fails(failing) else 1


def run_settings(
    given: dict[str, Any], explicit: set[str], project: ProjectConfig
) -> tuple[str, ...]:
    """The run's output settings in ``given``, the configuration's where the command line
    left them (``--ignore`` patterns add up), checked; returns what fails. A bad value from
    the configuration names its file; models import from the configuration's folder."""
    given.update(output_values(project.options, explicit))
    given["ignore"] = run_ignores(list(given.get("ignore") or []), project.options)
    with_project_imports(project)
    try:
        failing = parse_fail_on(given["fail_on"])
        check_format(given["output_format"])
        check_ignores(given["ignore"])
    except GradscopeError as error:
        if project.path is None or not set(project.options) & {"fail_on", "format", "ignore"}:
            raise
        raise GradscopeError(f"{error} (read from {project.path})") from None
    return failing


def check_ignores(patterns: list[str]) -> None:
    """Refuse an ``--ignore`` pattern whose id no finding has."""
    unknown = [p for p in patterns if p.partition(":")[0] not in FINDING_IDS]
    if unknown:
        raise GradscopeError(
            f"--ignore {unknown[0]}: no finding has that id; the ids are {', '.join(FINDING_IDS)}"
        )


def cli_keywords(given: dict[str, Any]) -> dict[str, Any]:
    """analyze()'s keywords from the command line's parameters."""
    return {
        "model": given["model"],
        "model_args": given["model_args"],
        "trust": given["trust"],
        "allow_globals": tuple(given["allow_global"] or ()),
        "nonlinearity": given["nonlinearity"],
        "steps": given["steps"],
        "batch": given["batch"],
        "seed": given["seed"],
        "dtype": given["dtype"],
        "probe": given["probe"],
        "input_shape": given["input_shape"] or None,
        "batch_first": given["batch_first"],
        "horizon": given["horizon"],
        "epsilon": given["epsilon"],
        "burn_in": given["burn_in"],
        "exponents": given["exponents"],
        "spectrum_steps": given["spectrum_steps"],
        "max_memory": given["max_memory"],
        "only": tuple(given["only"] or ()),
        "stream": given["stream"],
        "device": given["device"],
        "output_key": given["output_key"],
        "cells": tuple(given["cell"] or ()),
        "depth": given["depth"],
        "chi_probes": given["chi_probes"],
        "power_iterations": given["power_iterations"],
        "detect_cells": given["detect_cells"],
        "loss_at": given["loss_at"],
        "what_if": given["what_if"],
    }


def finish(
    report: Report, given: dict[str, Any], project: ProjectConfig, update: bool = False
) -> Report:
    """The report as the command line hands it on: the config file it used, the findings
    ``--ignore`` names marked, and compared with (or written to) ``--baseline``."""
    from gradscope.baseline import against_baseline, compare, load_baseline

    report.settings.config = shown(project.path) if project.path else None
    report = report.ignoring(list(given.get("ignore") or []))
    baseline = given.get("baseline")
    if baseline and update:
        try:
            Path(baseline).write_text(report.to_json() + "\n", encoding="utf-8")
        except OSError as error:
            raise GradscopeError(f"--baseline {baseline}: cannot write it ({error})") from None
    elif baseline:
        tolerance = given.get("regression_tolerance", DEFAULT_TOLERANCE)
        comparison = compare(report, load_baseline(baseline), baseline, tolerance)
        report = against_baseline(report, comparison).ignoring(list(given.get("ignore") or []))
    elif update:
        raise GradscopeError("--update-baseline needs --baseline FILE: the file to write")
    return report


def shown(path: str | Path) -> str:
    """A path as reports show it: relative to the working directory when it lies below it
    (a CI's repository root), so that reports do not depend on where the checkout is."""
    resolved = Path(path).resolve()
    here = Path.cwd().resolve()
    return str(resolved.relative_to(here)) if resolved.is_relative_to(here) else str(path)


def with_project_imports(project: ProjectConfig) -> None:
    """Let ``model = "package.module:Class"`` import from the configuration's folder."""
    if project.path is not None:
        folder = str(project.path.parent.resolve())
        if folder not in sys.path:
            sys.path.insert(0, folder)


def explicit_parameters(ctx: typer.Context) -> set[str]:
    """The parameters given on the command line (not left at their defaults)."""
    return {
        name
        for name in ctx.params
        if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)
    }


@app.command(short_help="Check the models the project's configuration lists; the worst exit code.")
def check(
    ctx: typer.Context,
    names: Annotated[
        list[str] | None,
        typer.Argument(
            help="The models to check, by name \\[default: every one].", show_default=False
        ),
    ] = None,
    config: CONFIG_OPTION = None,
    output_format: Annotated[
        str, typer.Option("--format", "-f", help=FORMAT_HELP, rich_help_panel=OUTPUT)
    ] = "text",
    output: OUTPUT_OPTION = None,
    fail_on: Annotated[
        str,
        typer.Option(
            help="What exits 1 (comma-separated), as for analyze.", rich_help_panel=OUTPUT
        ),
    ] = ",".join(DEFAULT_FAIL_ON),
    ignore: IGNORE_OPTION = None,
    html: HTML_OPTION = None,
    github: GITHUB_OPTION = None,
    exit_zero: Annotated[
        bool, typer.Option(help="Always exit 0 after the reports.", rich_help_panel=OUTPUT)
    ] = False,
    update_baseline: Annotated[
        bool,
        typer.Option(
            help="Write each model's report to the baseline its entry names.",
            rich_help_panel=OUTPUT,
        ),
    ] = False,
    debug: Annotated[bool, DEBUG_OPTION] = False,
) -> int:
    """Check the models the project's configuration lists (or those NAMES): one summary
    table, the details of what failed, and the worst exit code (2 when a model could not be
    checked)."""
    given = dict(locals())
    explicit = explicit_parameters(ctx)
    project = load_config(Path(config) if config else None)
    failing = run_settings(given, explicit, project)
    entries = chosen_models(project, list(dict.fromkeys(names or [])))
    checked: list[Checked] = []
    with progress_on_stderr() as progress:
        for entry in entries:
            progress(f"checking {entry.name}")
            checked.append(check_one(entry, project, given["ignore"], progress, update_baseline))
    delivery = Delivery(
        given["output_format"], given["output"], given["github"], failing, given["html"]
    )
    deliver(checked, delivery, stdout_console())
    if any(entry.report is None for entry in checked):
        return 2
    fails = any(entry.report.fails(failing) for entry in checked if entry.report is not None)
    return 0 if given["exit_zero"] or not fails else 1


def chosen_models(project: ProjectConfig, names: list[str]) -> list[ModelEntry]:
    """The model entries to check: every one, or those ``names`` names (all known)."""
    if not project.models:
        where = project.path or "no pyproject.toml was found"
        raise GradscopeError(
            f"{where}: no models to check; add one [[tool.gradscope.models]] table per "
            'checkpoint (name = "encoder", path = "encoder.pt"), or run gradscope analyze FILE'
        )
    known = {entry.name: entry for entry in project.models}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise GradscopeError(
            f"no model named {', '.join(unknown)} in {project.path}; its models are "
            f"{', '.join(known)}"
        )
    return [known[name] for name in names] if names else list(project.models)


def check_one(
    entry: ModelEntry,
    project: ProjectConfig,
    ignore: list[str],
    progress: Callable[[str], None],
    update: bool = False,
) -> Checked:
    """One model's report (its options over the project's), or why there is none."""
    from gradscope.api import analyze as run_analysis

    options = {**project.options, **entry.options}
    path = shown(entry.path)
    values = {
        "ignore": run_ignores(ignore, entry.options),
        "baseline": options.get("baseline"),
        "regression_tolerance": options.get("regression_tolerance", DEFAULT_TOLERANCE),
    }
    try:
        report = run_analysis(path, **analysis_keywords(options, set()), progress=progress)
        return Checked(entry.name, path, finish(report, values, project, update))
    except GradscopeError as error:
        return Checked(entry.name, path, error=str(error))
    except Exception as error:
        if _Debug.requested:
            traceback.print_exc()
        return Checked(
            entry.name,
            path,
            error=f"internal error: {type(error).__name__}: {first_line(error)} (rerun "
            "gradscope analyze on it with --debug for a traceback, and report it)",
        )


@app.command(short_help="Compare checkpoints or saved reports side by side, first to last.")
def compare(
    ctx: typer.Context,
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Checkpoints or saved JSON reports, in order; a quoted glob "
            '("ckpts/epoch-*.pt") is expanded in natural order, epoch-2 before epoch-10.',
            show_default=False,
        ),
    ],
    model: Annotated[
        str | None,
        typer.Option(help="The class for a state_dict, as for analyze.", rich_help_panel=LOADING),
    ] = None,
    model_args: Annotated[
        str | None,
        typer.Option(help="JSON keyword arguments for --model.", rich_help_panel=LOADING),
    ] = None,
    trust: Annotated[
        bool, typer.Option(help="Load files that hold code.", rich_help_panel=LOADING)
    ] = False,
    steps: Annotated[
        int | None, typer.Option(help="Probe length T.", rich_help_panel=ANALYSIS)
    ] = None,
    batch: Annotated[
        int | None, typer.Option(help="Probe batch.", rich_help_panel=ANALYSIS)
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed.", rich_help_panel=ANALYSIS)] = DEFAULTS.seed,
    input_shape: Annotated[
        list[str] | None,
        typer.Option(metavar="SHAPE", help="Full input shape.", rich_help_panel=ANALYSIS),
    ] = None,
    cell: Annotated[
        list[str] | None, typer.Option(help="A custom cell's path.", rich_help_panel=ANALYSIS)
    ] = None,
    horizon: Annotated[
        int | None, typer.Option(help="Distance L to judge over.", rich_help_panel=ANALYSIS)
    ] = None,
    config: CONFIG_OPTION = None,
    output_format: Annotated[
        str,
        typer.Option("--format", "-f", help="text, json or markdown.", rich_help_panel=OUTPUT),
    ] = "text",
    html: HTML_OPTION = None,
    debug: Annotated[bool, DEBUG_OPTION] = False,
) -> int:
    """Compare checkpoints (or saved reports) side by side: a table per core, stack and
    sequence view with a column per input, and the change from the first to the last. Other
    analysis options come from the configuration; exit 1 when the last input fails."""
    from gradscope.compare import compare as series
    from gradscope.compare import expanded, read_reports
    from gradscope.render.compare import ComparisonRenderer

    if output_format not in ("text", "json", "markdown"):
        raise GradscopeError(f"--format {output_format!r}: compare writes text, json or markdown")
    explicit = explicit_parameters(ctx)
    project = load_config(Path(config) if config else None)
    with_project_imports(project)
    given = {"model": model, "model_args": model_args, "trust": trust, "steps": steps}
    given |= {"batch": batch, "seed": seed, "input_shape": input_shape or None}
    given |= {"cells": tuple(cell or ()), "horizon": horizon}
    keywords = {key: value for key, value in given.items() if value is not None}
    keywords.update(analysis_keywords(project.options, explicit))
    named: list[tuple[str, dict]] = []
    from gradscope.api import analyze as run_analysis

    with progress_on_stderr() as progress:
        for path in expanded(inputs):
            saved = read_reports(path)
            if saved is not None:
                named += saved
                continue
            progress(f"analysing {path}")
            named.append((path, run_analysis(path, **keywords, progress=progress).to_dict()))
    if len(named) < 2:
        raise GradscopeError("compare needs two inputs or more (checkpoints or JSON reports)")
    comparison = series(named)
    ComparisonRenderer(output_format).write(comparison, stdout_console())
    if html:
        from gradscope.render.delivery import write_file
        from gradscope.render.html import comparison_page

        write_file(html, comparison_page(comparison), "--html")
    return 1 if comparison.fails() else 0


@app.command()
def demo(
    output_format: Annotated[str, typer.Option("--format", "-f", help="text or json.")] = "text",
    steps: Annotated[int, typer.Option(help="Probe length T.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed for the models and the probe.")] = 0,
    html: HTML_OPTION = None,
    debug: Annotated[bool, DEBUG_OPTION] = False,
) -> int:
    """Compare the course's recurrent models: vanilla RNN, LSTM, GRU, deep and bidirectional."""
    check_format(output_format)
    if output_format not in ("text", "json"):
        raise GradscopeError(
            f"--format {output_format}: the demo writes text or json (--html FILE for a page)"
        )
    from gradscope.demo import run_demo
    from gradscope.render.demo import write_demo

    with progress_on_stderr() as progress:
        results = run_demo(seed=seed, steps=steps, progress=progress)
    write_demo(results, output_format, stdout_console())
    if html:
        from gradscope.render.delivery import write_file
        from gradscope.render.html import reports_page

        entries = [(demo.description, report, None) for demo, report in results]
        write_file(html, reports_page("gradscope demo", entries), "--html")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run the CLI and map every outcome to exit code 0, 1 or 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    _Debug.requested = False
    command = typer.main.get_command(app)
    try:
        result = command.main(args=args, prog_name="gradscope", standalone_mode=False)
    except GradscopeError as error:
        print(f"gradscope: error: {error}", file=sys.stderr)
        return 2
    except click_errors.NoArgsIsHelpError as error:
        # Raising it rendered the help already (typer's rich help prints as it formats, and
        # leaves the message empty); plain click keeps the help text as the message.
        if error.format_message().strip():
            print(error.format_message())
        return 0
    except click_errors.ClickException as error:
        message = " ".join(error.format_message().split())
        hint = "see gradscope --help"
        if isinstance(error, click_errors.UsageError) and error.ctx is not None:
            hint = f"see {error.ctx.command_path} --help"
        print(f"gradscope: error: {message} ({hint})", file=sys.stderr)
        return 2
    except (getattr(click_errors, "Abort", typer.Abort), typer.Abort):
        print("gradscope: aborted", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gradscope: interrupted", file=sys.stderr)
        return 2
    except Exception as error:
        if _Debug.requested:
            traceback.print_exc()
        print(
            f"gradscope: internal error: {type(error).__name__}: {first_line(error)} "
            "(rerun with --debug for a traceback, and report it)",
            file=sys.stderr,
        )
        return 2
    if result == 130:  # typer turns Ctrl-C (KeyboardInterrupt) into exit code 130
        print("gradscope: interrupted", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0
