"""The command line: exit codes, stdout/stderr discipline, option checking, and the demo.

Most tests call ``gradscope.cli.main(argv)`` in process (it returns the exit code and never
raises); a few run the real ``python -m gradscope`` in a subprocess, as a user or CI would.
"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import gradscope.api
import gradscope.demo
from gradscope import __version__
from gradscope.cli import main

from tests.helpers.html_check import assert_self_contained, parsed
from tests.helpers.models import Classifier
from tests.helpers.samples import CORE_KEYS, TOP_KEYS

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
DEMO_NAMES = ["rnn", "rnn-gain-3", "lstm", "lstm-forget-1", "gru", "lstm-2-layer", "lstm-bidir"]
DEEP_DEMO_NAMES = ["mlp-sigmoid", "mlp-relu-he", "residual", "residual-scaled"]


def run_cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """``python -m gradscope ARGS`` in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "gradscope", *args],
        cwd=cwd,
        env=dict(os.environ, **env),
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_usage_error(code: int, captured, *expected: str) -> None:
    """Exit 2, nothing on stdout, and one line on stderr that says what is wrong."""
    assert code == 2, captured.err
    assert captured.out == ""
    assert "Traceback" not in captured.err
    assert captured.err.startswith("gradscope: "), captured.err
    assert captured.err.endswith("\n") and captured.err.count("\n") == 1, captured.err
    for part in expected:
        assert part in captured.err, captured.err


def analyze_json(capsys, *args: str) -> tuple[int, dict]:
    code = main(["analyze", *args, "--format", "json"])
    captured = capsys.readouterr()
    assert code in (0, 1), captured.err
    return code, json.loads(captured.out)


@pytest.fixture(scope="module")
def classifier_path(tmp_path_factory) -> Path:
    """A vanilla tanh RNN classifier, default init: its gradient vanishes within 100 steps."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("checkpoints") / "rnn_classifier.pt"
    torch.save(Classifier(nn.RNN(4, 8, batch_first=True)), path)
    return path


@pytest.fixture(scope="module")
def rnn_path(tmp_path_factory) -> Path:
    """A bare nn.RNN, pickled whole: loads without --trust."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("checkpoints") / "rnn.pt"
    torch.save(nn.RNN(4, 8, batch_first=True), path)
    return path


@pytest.fixture(scope="module")
def lstm_path(tmp_path_factory) -> Path:
    """A 2-layer bidirectional LSTM: four cores, each with a (h, c) state."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("checkpoints") / "lstm.pt"
    torch.save(nn.LSTM(4, 8, num_layers=2, bidirectional=True, batch_first=True), path)
    return path


# --- help, version, imports ------------------------------------------------------------------


def test_help_in_a_subprocess(tmp_path):
    result = run_cli("--help", cwd=tmp_path, NO_COLOR="1")

    assert result.returncode == 0, result.stderr
    assert "analyze" in result.stdout
    assert "demo" in result.stdout
    assert "Traceback" not in result.stderr


def test_importing_the_cli_does_not_import_torch(tmp_path):
    script = "import sys, gradscope, gradscope.cli; sys.exit('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, "import gradscope.cli imported torch"


def test_analyze_help_lists_the_options(capsys):
    code = main(["analyze", "--help"])

    out = capsys.readouterr().out
    assert code == 0
    for option in ("--steps", "--horizon", "--fail-on", "--exit-zero", "--format", "--trust"):
        assert option in out


def test_no_arguments_prints_the_help_once(capsys):
    code = main([])

    captured = capsys.readouterr()
    assert code == 0
    assert captured.out.count("Usage") == 1, captured.out
    assert "analyze" in captured.out


def test_version(capsys):
    code = main(["--version"])

    captured = capsys.readouterr()
    assert code == 0
    assert captured.out == f"gradscope {__version__}\n"
    assert captured.err == ""


# --- verdicts and exit codes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected_code", "expected_status"),
    [
        ([], 1, "vanishing"),
        (["--exit-zero"], 0, "vanishing"),
        (["--fail-on", "exploding"], 0, "vanishing"),
        (["--fail-on", "exploding,nonfinite"], 0, "vanishing"),
        (["--fail-on", "exploding, vanishing"], 1, "vanishing"),
        (["--horizon", "5"], 0, "healthy"),
    ],
    ids=["default", "exit-zero", "fail-on-exploding", "fail-on-two", "fail-on-vanishing", "h5"],
)
def test_exit_codes_follow_the_verdict(
    classifier_path, capsys, args, expected_code, expected_status
):
    code, report = analyze_json(capsys, str(classifier_path), "--trust", *args)

    assert report["status"] == expected_status
    assert code == expected_code


def test_text_report_exit_code_matches_json(classifier_path, capsys):
    code = main(["analyze", str(classifier_path), "--trust"])
    captured = capsys.readouterr()
    assert code == 1
    assert "VANISHING" in captured.out

    code = main(["analyze", str(classifier_path), "--trust", "--horizon", "5"])
    captured = capsys.readouterr()
    assert code == 0
    assert "HEALTHY" in captured.out


# --- the JSON contract -----------------------------------------------------------------------


def check_contract(report: dict, steps: int) -> None:
    assert report.keys() >= TOP_KEYS
    assert report["schema_version"] == 1
    assert report["gradscope_version"] == __version__
    assert report["status"] in ("healthy", "vanishing", "exploding", "nonfinite")
    for key in ("steps", "batch", "horizon", "epsilon", "burn_in", "seed", "dtype", "probe"):
        assert key in report["settings"], key
    assert report["settings"]["steps"] == steps
    for key in ("path", "format", "parameters"):
        assert key in report["model"], key
    assert len(report["input_grad_norm"]) == steps
    assert report["recurrent"]
    for core in report["recurrent"]:
        assert core.keys() >= CORE_KEYS
        assert core["direction"] in ("forward", "reverse")
        assert core["steps"] == steps
        assert len(core["grad_norm"]) == core["steps"]
        assert all(isinstance(g, float) for g in core["grad_norm"])
        assert core["lyapunov"] == sorted(core["lyapunov"], reverse=True)
        assert core["memory_horizon"] is None or core["memory_horizon"] > 0
        for measure in ("spectral_radius", "sigma_max"):
            median, largest = (core["jacobian"][measure][k] for k in ("median", "max"))
            assert isinstance(median, float) and isinstance(largest, float)
            assert 0 <= median <= largest
        assert core["status"] in ("healthy", "vanishing", "exploding", "nonfinite")
    for finding in report["findings"]:
        assert {"id", "kind", "severity", "where", "message", "fixes"} <= finding.keys()
    for fix in report["fixes"]:
        assert {"id", "title", "detail", "snippet"} <= fix.keys()


def test_json_report_follows_the_contract(classifier_path, capsys):
    code = main(["analyze", str(classifier_path), "--trust", "--format", "json"])

    captured = capsys.readouterr()
    assert code == 1
    assert captured.err == ""
    assert captured.out.startswith("{") and captured.out.endswith("}\n")
    report = json.loads(captured.out)  # one document and nothing else, or this raises
    check_contract(report, steps=100)
    assert report["status"] == "vanishing"
    assert report["model"]["format"] == "pickled-module"
    assert report["model"]["path"] == str(classifier_path)
    [core] = report["recurrent"]
    assert (core["name"], core["cell"], core["layer"], core["direction"]) == (
        "encoder",
        "rnn_tanh",
        0,
        "forward",
    )
    assert (core["input_size"], core["hidden_size"], core["state_size"]) == (4, 8, 8)
    assert core["status"] == "vanishing"
    assert core["lyapunov"][0] < 0
    assert core["memory_horizon"] < 100
    assert report["findings"] and report["fixes"]
    assert {fix["id"] for fix in report["fixes"]} >= {
        fix_id for finding in report["findings"] for fix_id in finding["fixes"]
    }


def test_json_report_for_every_core_of_a_deep_bidirectional_lstm(lstm_path, capsys):
    _, report = analyze_json(capsys, str(lstm_path), "--steps", "30", "-f", "json")

    check_contract(report, steps=30)
    cores = [(c["layer"], c["direction"]) for c in report["recurrent"]]
    assert sorted(cores) == [(0, "forward"), (0, "reverse"), (1, "forward"), (1, "reverse")]
    for core in report["recurrent"]:
        assert core["cell"] == "lstm"
        assert core["hidden_size"] == 8 and core["state_size"] == 16
        assert core["input_size"] == (4 if core["layer"] == 0 else 16)


def test_json_on_stdout_of_the_real_command(rnn_path, tmp_path):
    result = run_cli("analyze", str(rnn_path), "--steps", "40", "--format", "json", cwd=tmp_path)

    assert result.returncode in (0, 1), result.stderr
    check_contract(json.loads(result.stdout), steps=40)
    assert "Traceback" not in result.stderr


# --- the text report -------------------------------------------------------------------------


def _plain_terminal_env(monkeypatch) -> None:
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "CLICOLOR_FORCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_COLOR", "1")


def test_text_report_without_colour(rnn_path, capsys, monkeypatch):
    _plain_terminal_env(monkeypatch)

    code = main(["analyze", str(rnn_path), "--steps", "40"])

    captured = capsys.readouterr()
    assert code in (0, 1)
    assert not ANSI.search(captured.out), repr(captured.out[:200])
    assert not ANSI.search(captured.err)
    for heading in ("Recurrent cores", "horizon", "status", "Verdict"):
        assert heading in captured.out
    assert "rnn_tanh" in captured.out


def test_text_report_in_a_pipe_has_no_ansi_codes(rnn_path, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    result = subprocess.run(
        [sys.executable, "-m", "gradscope", "analyze", str(rnn_path), "--steps", "40"],
        cwd=tmp_path,
        env=dict(env, NO_COLOR="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode in (0, 1), result.stderr
    assert not ANSI.search(result.stdout)
    assert "Verdict" in result.stdout
    assert not ANSI.search(result.stderr)


def test_forced_colour_does_show_ansi_codes(rnn_path, capsys, monkeypatch):
    """The ANSI check above can fail: with colour forced, the codes are there."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("FORCE_COLOR", "1")

    main(["analyze", str(rnn_path), "--steps", "40"])

    assert ANSI.search(capsys.readouterr().out)


# --- bad options -----------------------------------------------------------------------------

BAD_OPTIONS = {
    "steps-0": (["--steps", "0"], ["--steps"]),
    "steps-negative": (["--steps", "-3"], ["--steps"]),
    "steps-not-a-number": (["--steps", "abc"], ["--steps"]),
    "batch-0": (["--batch", "0"], ["--batch"]),
    "dtype-int8": (["--dtype", "int8"], ["--dtype", "int8"]),
    "epsilon-0": (["--epsilon", "0"], ["--epsilon"]),
    "epsilon-2": (["--epsilon", "2"], ["--epsilon"]),
    "epsilon-nan": (["--epsilon", "nan"], ["--epsilon"]),
    "horizon-0": (["--horizon", "0"], ["--horizon"]),
    "burn-in-too-long": (["--burn-in", "500"], ["--burn-in", "500"]),
    "burn-in-negative": (["--burn-in", "-1"], ["--burn-in"]),
    "exponents-0": (["--exponents", "0"], ["--exponents"]),
    "spectrum-steps-bogus": (["--spectrum-steps", "bogus"], ["--spectrum-steps", "bogus"]),
    "spectrum-steps-0": (["--spectrum-steps", "0"], ["--spectrum-steps"]),
    "fail-on-nonsense": (["--fail-on", "nonsense"], ["--fail-on", "nonsense"]),
    "fail-on-empty": (["--fail-on", ","], ["--fail-on"]),
    "format-xml": (["--format", "xml"], ["--format", "xml"]),
    "input-shape-letters": (["--input-shape", "1,a,3"], ["--input-shape", "1,a,3"]),
    "input-shape-zero": (["--input-shape", "1,0,4"], ["--input-shape"]),
    "device-unknown": (["--device", "nosuchdevice"], ["--device", "nosuchdevice"]),
    "unknown-option": (["--stepz", "3"], ["--stepz"]),
}


@pytest.mark.parametrize("name", list(BAD_OPTIONS))
def test_bad_options_exit_2_with_one_line(rnn_path, capsys, name):
    args, expected = BAD_OPTIONS[name]

    code = main(["analyze", str(rnn_path), *args])

    assert_usage_error(code, capsys.readouterr(), *expected)


def test_input_shape_with_a_stray_x_is_refused(rnn_path, capsys):
    code = main(["analyze", str(rnn_path), "--input-shape", "1,x,3"])

    assert_usage_error(code, capsys.readouterr(), "--input-shape '1,x,3'", "not a shape")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu(rnn_path, capsys):
    code = main(["analyze", str(rnn_path), "--device", "cuda"])

    assert_usage_error(code, capsys.readouterr(), "--device cuda", "--device cpu")


def test_missing_checkpoint_argument(capsys):
    code = main(["analyze"])

    assert_usage_error(code, capsys.readouterr(), "Missing argument", "checkpoint")


def test_unknown_command(capsys):
    code = main(["analyse-this"])

    assert_usage_error(code, capsys.readouterr(), "analyse-this")


def test_bad_option_in_a_subprocess(rnn_path, tmp_path):
    result = run_cli("analyze", str(rnn_path), "--steps", "abc", cwd=tmp_path)

    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "--steps" in result.stderr


# --- probe files -----------------------------------------------------------------------------


def test_probe_file_missing(rnn_path, tmp_path, capsys):
    code = main(["analyze", str(rnn_path), "--probe", str(tmp_path / "missing.pt")])

    assert_usage_error(code, capsys.readouterr(), "--probe", "missing.pt")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (torch.zeros(1, 20, 5), ["--probe", "(1, 20, 5)"]),
        (torch.zeros(2, 3, 20, 4), ["--probe", "(2, 3, 20, 4)"]),
        ({"x": torch.zeros(1, 20, 4)}, ["--probe", "dict"]),
    ],
    ids=["wrong-features", "four-dims", "not-a-tensor"],
)
def test_probe_file_of_the_wrong_shape(rnn_path, tmp_path, capsys, content, expected):
    path = tmp_path / "probe.pt"
    torch.save(content, path)

    code = main(["analyze", str(rnn_path), "--probe", str(path)])

    assert_usage_error(code, capsys.readouterr(), *expected)


def test_probe_file_that_is_not_a_tensor_file(rnn_path, tmp_path, capsys):
    path = tmp_path / "probe.npy"
    path.write_text("not numpy\n")

    code = main(["analyze", str(rnn_path), "--probe", str(path)])

    assert_usage_error(code, capsys.readouterr(), "--probe")


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_probe_file_of_the_right_shape(rnn_path, tmp_path, capsys, suffix):
    values = np.random.default_rng(0).standard_normal((2, 25, 4))
    path = tmp_path / f"probe{suffix}"
    if suffix == ".npy":
        np.save(path, values)
    else:
        torch.save(torch.from_numpy(values), path)

    code, report = analyze_json(capsys, str(rnn_path), "--probe", str(path))

    assert code in (0, 1)
    assert report["settings"]["steps"] == 25
    assert report["settings"]["batch"] == 2
    assert report["recurrent"][0]["steps"] == 25


# --- the demo --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_results():
    """The demo's analyses, computed once for the module (the slowest thing here)."""
    return gradscope.demo.run_demo(seed=0, steps=100)


@pytest.fixture
def cached_demo(demo_results, monkeypatch):
    """``gradscope demo`` runs on the cached analyses; the CLI's arguments are checked."""

    def run_demo(seed=0, progress=None, **options):
        assert seed == 0 and options == {"steps": 100}
        return demo_results

    monkeypatch.setattr(gradscope.demo, "run_demo", run_demo)


def test_demo_prints_the_table(cached_demo, capsys, monkeypatch):
    _plain_terminal_env(monkeypatch)

    code = main(["demo"])

    captured = capsys.readouterr()
    assert code == 0
    first_words = [
        line.strip("│┃║ ").split()[0] for line in captured.out.splitlines() if line.strip("│┃║ ")
    ]
    for name in DEMO_NAMES:
        assert name in first_words, name
    assert "vanishing" in captured.out and "exploding" in captured.out
    assert not ANSI.search(captured.out)


def test_demo_json(cached_demo, capsys):
    code = main(["demo", "--format", "json"])

    captured = capsys.readouterr()
    assert code == 0
    data = json.loads(captured.out)
    assert [entry["name"] for entry in data["demo"]] == DEMO_NAMES + DEEP_DEMO_NAMES
    statuses = {entry["name"]: entry["report"]["status"] for entry in data["demo"]}
    assert statuses["rnn"] == "vanishing"
    assert statuses["rnn-gain-3"] == "exploding"
    assert [statuses[name] for name in DEEP_DEMO_NAMES] == [
        "vanishing",
        "healthy",
        "exploding",
        "healthy",
    ]
    cores = {entry["name"]: len(entry["report"]["recurrent"]) for entry in data["demo"]}
    assert cores["lstm-2-layer"] == 2 and cores["lstm-bidir"] == 2 and cores["gru"] == 1
    for entry in data["demo"]:
        assert entry["report"]["schema_version"] == 1


def test_demo_bad_format(capsys):
    code = main(["demo", "--format", "xml"])

    assert_usage_error(code, capsys.readouterr(), "--format")
    # a format that analyze knows but the demo does not write is refused too, not ignored
    code = main(["demo", "--format", "markdown"])

    assert_usage_error(code, capsys.readouterr(), "--format")


def test_demo_writes_every_model_to_one_html_page(cached_demo, demo_results, capsys, tmp_path):
    out = tmp_path / "demo.html"
    code = main(["demo", "--html", str(out)])

    assert code == 0
    page = out.read_text(encoding="utf-8")
    structure = parsed(page)
    assert_self_contained(page, structure)
    for i, (chosen, report) in enumerate(demo_results, start=1):
        section = page[page.index(f"<section id='model-{i}'>") :]
        assert section.startswith(f"<section id='model-{i}'><h1>{html.escape(chosen.description)}")
        link = f"<a href='#model-{i}'>{html.escape(chosen.description)}</a>"
        assert f'{link}</td><td><span class="status {report.status}">' in page
    assert page.count("<section") == len(demo_results)


# --- internal errors -------------------------------------------------------------------------


def _broken_analyze(*args, **kwargs):
    raise RuntimeError("something broke\nwith a second line")


def test_internal_error_is_one_line(rnn_path, capsys, monkeypatch):
    monkeypatch.setattr(gradscope.api, "analyze", _broken_analyze)

    code = main(["analyze", str(rnn_path)])

    assert_usage_error(
        code, capsys.readouterr(), "internal error", "RuntimeError", "something broke", "--debug"
    )


def test_internal_error_with_debug_shows_the_traceback(rnn_path, capsys, monkeypatch):
    monkeypatch.setattr(gradscope.api, "analyze", _broken_analyze)

    code = main(["analyze", str(rnn_path), "--debug"])

    captured = capsys.readouterr()
    assert code == 2
    assert "Traceback" in captured.err
    assert "_broken_analyze" in captured.err
    assert captured.err.splitlines()[-1].startswith("gradscope: internal error: RuntimeError")


def test_interrupt_exits_2(rnn_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gradscope.api, "analyze", interrupted)

    code = main(["analyze", str(rnn_path)])

    assert_usage_error(code, capsys.readouterr(), "interrupted")


class FailingForward(nn.Module):
    """A model whose forward raises."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(4, 8, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rnn(x)
        raise ValueError("this model only runs on Tuesdays\nsee the docs")


class _ExplodingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("backward is broken\nin two lines")


class FailingBackward(nn.Module):
    """A model whose backward raises: an error inside the measurement, not the user's input."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(4, 8, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ExplodingBackward.apply(self.rnn(x)[0])


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (FailingForward, ["forward", "ValueError", "Tuesdays"]),
        (FailingBackward, ["RuntimeError", "backward is broken"]),
    ],
    ids=["forward", "backward"],
)
def test_model_that_raises(tmp_path, capsys, model, expected):
    path = tmp_path / "failing.pt"
    torch.save(model(), path)

    code = main(["analyze", str(path), "--trust", "--steps", "20"])

    assert_usage_error(code, capsys.readouterr(), *expected)


def test_without_a_terminal_long_runs_show_progress_lines_on_stderr(rnn_path, capsys, monkeypatch):
    import gradscope.cli

    monkeypatch.setattr(gradscope.cli, "PLAIN_PROGRESS_AFTER", 0.0)
    code = main(["analyze", str(rnn_path), "--steps", "8", "--format", "json"])
    captured = capsys.readouterr()
    assert code in (0, 1)
    json.loads(captured.out)  # stdout holds the report alone
    assert "gradscope: loading the model\n" in captured.err
    assert "Lyapunov exponents over 8 steps" in captured.err


def test_without_a_terminal_short_runs_stay_silent(rnn_path, capsys):
    code = main(["analyze", str(rnn_path), "--steps", "8", "--format", "json"])
    assert code in (0, 1)
    assert capsys.readouterr().err == ""
