"""The ``gradscope`` command line. Torch is imported only once a command runs."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console

from gradscope import __version__
from gradscope.errors import GradscopeError, first_line
from gradscope.options import DEFAULTS
from gradscope.render import FORMATS
from gradscope.report import DEFAULT_FAIL_ON, FAIL_ON_CHOICES

try:  # recent typer releases vendor click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer depends on click itself
    from click import exceptions as click_errors

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
        raise GradscopeError(f"--format {output_format!r}: choose {' or '.join(FORMATS)}")
    return output_format


@contextmanager
def progress_on_stderr() -> Iterator[Callable[[str], None]]:
    """A progress callback: a spinner on an interactive stderr, silence otherwise."""
    console = Console(stderr=True)
    if not console.is_terminal:
        yield lambda message: None
        return
    with console.status("gradscope: starting") as status:
        yield lambda message: status.update(f"gradscope: {message}")


def stdout_console() -> Console:
    """The console reports are written to (rich honours NO_COLOR and non-TTY output)."""
    return Console(soft_wrap=False)


@app.command()
def analyze(
    checkpoint: Annotated[
        str,
        typer.Argument(
            help="A checkpoint: torch.save (.pt, .pth, Lightning .ckpt), safetensors, "
            "TorchScript or torch.export (.pt2)."
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
        str, typer.Option(help="float64 or float32.", rich_help_panel=ANALYSIS)
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
    output_format: Annotated[
        str, typer.Option("--format", "-f", help="text or json.", rich_help_panel=OUTPUT)
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
    debug: Annotated[bool, DEBUG_OPTION] = False,
) -> int:
    """Analyse CHECKPOINT: gradient norms over time, Jacobian spectra, Lyapunov exponents."""
    failing = parse_fail_on(fail_on)
    check_format(output_format)
    from gradscope.api import analyze as run_analysis
    from gradscope.render import write

    with progress_on_stderr() as progress:
        report = run_analysis(
            checkpoint,
            model=model,
            model_args=model_args,
            trust=trust,
            allow_globals=tuple(allow_global or ()),
            nonlinearity=nonlinearity,
            steps=steps,
            batch=batch,
            seed=seed,
            dtype=dtype,
            probe=probe,
            input_shape=input_shape or None,
            batch_first=batch_first,
            horizon=horizon,
            epsilon=epsilon,
            burn_in=burn_in,
            exponents=exponents,
            spectrum_steps=spectrum_steps,
            device=device,
            output_key=output_key,
            cells=tuple(cell or ()),
            depth=depth,
            chi_probes=chi_probes,
            power_iterations=power_iterations,
            detect_cells=detect_cells,
            loss_at=loss_at,
            progress=progress,
        )
    write(report, output_format, stdout_console())
    return 0 if exit_zero or not report.fails(failing) else 1


@app.command()
def demo(
    output_format: Annotated[str, typer.Option("--format", "-f", help="text or json.")] = "text",
    steps: Annotated[int, typer.Option(help="Probe length T.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed for the models and the probe.")] = 0,
    debug: Annotated[bool, DEBUG_OPTION] = False,
) -> int:
    """Compare the course's recurrent models: vanilla RNN, LSTM, GRU, deep and bidirectional."""
    check_format(output_format)
    from gradscope.demo import run_demo
    from gradscope.render.demo import write_demo

    with progress_on_stderr() as progress:
        results = run_demo(seed=seed, steps=steps, progress=progress)
    write_demo(results, output_format, stdout_console())
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
