"""gradscope as a CI gate: configuration and its precedence, check over several models,
--output, GitHub's annotations and step summary, --ignore, baselines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from gradscope.cli import main

from tests.helpers.models import orthogonal, rnn_with_recurrence

STEPS = 20


def rnn_checkpoint(path: Path, gain: float) -> Path:
    """A vanilla RNN whose W_hh is ``gain`` times an orthogonal matrix, as a state dict."""
    torch.manual_seed(0)
    rnn = rnn_with_recurrence(gain * orthogonal(8, seed=1))
    with torch.no_grad():
        rnn.weight_ih_l0.normal_(0, 0.05)
    torch.save(rnn.state_dict(), path)
    return path


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A repository with a pyproject.toml, as the working directory."""
    (tmp_path / ".git").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    return tmp_path


def json_of(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_the_config_sets_options_and_the_command_line_wins(project, capsys):
    rnn_checkpoint(project / "rnn.pt", 0.99)
    (project / "pyproject.toml").write_text(
        f'[tool.gradscope]\nsteps = {STEPS}\nepsilon = 1e-2\nformat = "json"\n'
    )
    assert main(["analyze", "rnn.pt"]) in (0, 1)
    settings = json_of(capsys)["settings"]
    assert (settings["steps"], settings["epsilon"]) == (STEPS, 1e-2)
    assert settings["config"] == "pyproject.toml"  # shown from the working directory
    main(["analyze", "rnn.pt", "--steps", "10", "--epsilon", "0.001"])
    settings = json_of(capsys)["settings"]
    assert (settings["steps"], settings["epsilon"]) == (10, 1e-3)


def test_a_bad_config_value_is_exit_2_naming_the_key_and_the_file(project, capsys):
    rnn_checkpoint(project / "rnn.pt", 0.99)
    (project / "pyproject.toml").write_text("[tool.gradscope]\nhorizon = 'long'\n")
    assert main(["analyze", "rnn.pt"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "horizon" in error and "pyproject.toml" in error


def test_check_runs_every_model_reports_the_broken_one_and_exits_2(project, capsys):
    rnn_checkpoint(project / "good.pt", 0.99)
    rnn_checkpoint(project / "short.pt", 0.5)
    (project / "broken.pt").write_text("not a checkpoint")
    (project / "pyproject.toml").write_text(
        f"[tool.gradscope]\nsteps = {STEPS}\n"
        '[[tool.gradscope.models]]\nname = "good"\npath = "good.pt"\n'
        '[[tool.gradscope.models]]\nname = "short"\npath = "short.pt"\n'
        '[[tool.gradscope.models]]\nname = "broken"\npath = "broken.pt"\n'
    )
    assert main(["check", "-f", "json"]) == 2
    models = json_of(capsys)["models"]
    assert [m["name"] for m in models] == ["good", "short", "broken"]
    assert models[0]["report"]["status"] == "healthy"
    assert models[1]["report"]["status"] == "vanishing"
    assert "not a PyTorch checkpoint" in models[2]["error"]
    assert main(["check", "good"]) == 0
    assert main(["check", "good", "short"]) == 1
    capsys.readouterr()
    assert main(["check", "nope"]) == 2
    assert "no model named nope" in capsys.readouterr().err


def test_output_writes_the_format_while_the_terminal_shows_text(project, capsys):
    rnn_checkpoint(project / "rnn.pt", 0.5)
    code = main(["analyze", "rnn.pt", "--steps", str(STEPS), "-f", "junit", "--output", "r.xml"])
    assert code == 1
    assert "Verdict" in capsys.readouterr().out
    assert (project / "r.xml").read_text().startswith('<?xml version="1.0"')


def test_under_github_actions_annotations_and_the_step_summary_are_written(
    project, capsys, monkeypatch
):
    rnn_checkpoint(project / "rnn.pt", 0.5)
    summary = project / "summary.md"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert main(["analyze", "rnn.pt", "--steps", str(STEPS)]) == 1
    out = capsys.readouterr().out
    assert "::error file=rnn.pt,title=gradscope vanishing-gradient::" in out
    assert summary.read_text().startswith("### gradscope: **vanishing**")
    summary.unlink()
    main(["analyze", "rnn.pt", "--steps", str(STEPS), "--no-github"])
    assert "::error" not in capsys.readouterr().out and not summary.exists()


def test_an_ignored_finding_is_listed_and_no_longer_fails(project, capsys):
    rnn_checkpoint(project / "rnn.pt", 0.5)
    args = ["analyze", "rnn.pt", "--steps", str(STEPS), "-f", "json"]
    assert main([*args, "--ignore", "vanishing-gradient:(model)"]) == 0
    findings = json_of(capsys)["findings"]
    assert any(f["id"] == "vanishing-gradient" and f["ignored"] for f in findings)
    assert main([*args, "--ignore", "vanishing-gradient:elsewhere"]) == 1


def test_a_worse_but_healthy_model_fails_against_its_baseline(project, capsys):
    args = ["analyze", "rnn.pt", "--steps", str(STEPS), "--baseline", "base.json"]
    rnn_checkpoint(project / "rnn.pt", 0.99)
    assert main([*args, "--update-baseline"]) == 0
    assert json.loads((project / "base.json").read_text())["status"] == "healthy"
    capsys.readouterr()
    assert main(args) == 0  # the same model: no regression
    capsys.readouterr()
    rnn_checkpoint(project / "rnn.pt", 0.97)  # still healthy over 20 steps, horizon ~3x shorter
    assert main([*args, "-f", "json"]) == 1
    report = json_of(capsys)
    assert report["status"] == "healthy"
    (regression,) = [f for f in report["findings"] if f["id"] == "regression"]
    assert "memory horizon" in regression["message"]
    changes = report["baseline"]["changes"]
    assert any(c["metric"] == "memory_horizon" and c["worse"] for c in changes)


def test_a_baseline_of_another_model_is_exit_2_naming_the_mismatch(project, capsys):
    rnn_checkpoint(project / "rnn.pt", 0.99)
    main(["analyze", "rnn.pt", "--steps", str(STEPS), "--baseline", "b.json", "--update-baseline"])
    torch.save(nn.GRU(8, 8, num_layers=2).state_dict(), project / "gru.pt")
    capsys.readouterr()
    assert main(["analyze", "gru.pt", "--steps", str(STEPS), "--baseline", "b.json"]) == 2
    assert "is a report of another model" in capsys.readouterr().err


def test_the_same_checkpoint_gives_the_same_bytes(project, capsys):
    rnn_checkpoint(project / "rnn.pt", 0.9)
    outputs = []
    for output_format in ("json", "markdown", "junit"):
        for _ in range(2):
            main(["analyze", "rnn.pt", "--steps", str(STEPS), "-f", output_format])
            outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[2] == outputs[3] and outputs[4] == outputs[5]


def action_script() -> str:
    """The shell script of the composite action's check step, as action.yml holds it."""
    lines = (Path(__file__).parents[1] / "action.yml").read_text().splitlines()
    start = lines.index("      run: |") + 1
    script = []
    for line in lines[start:]:
        if line.strip() and not line.startswith("        "):
            break
        script.append(line[8:])
    return "\n".join(script)


def test_the_composite_action_runs_gradscope_check_with_its_inputs(project):
    import os
    import shutil
    import subprocess
    import sys

    rnn_checkpoint(project / "good.pt", 0.99)
    rnn_checkpoint(project / "short.pt", 0.5)
    config = project / "gradscope.toml"
    config.write_text(
        f'steps = {STEPS}\n[[models]]\nname = "good"\npath = "good.pt"\n'
        '[[models]]\nname = "short"\npath = "short.pt"\n'
    )
    gradscope = shutil.which("gradscope") or str(Path(sys.executable).parent / "gradscope")
    env = {
        **os.environ,
        "PATH": f"{Path(gradscope).parent}{os.pathsep}{os.environ['PATH']}",
        "GRADSCOPE_CONFIG": str(config),
        "GRADSCOPE_FORMAT": "junit",
        "GRADSCOPE_OUTPUT": "",
        "GRADSCOPE_ARGS": "good",
    }
    run = subprocess.run(
        ["bash", "-c", action_script()], env=env, capture_output=True, text=True, cwd=project
    )
    assert run.returncode == 0, run.stderr
    assert '<testsuite name="good"' in run.stdout and "short" not in run.stdout
    env["GRADSCOPE_ARGS"] = ""
    run = subprocess.run(
        ["bash", "-c", action_script()], env=env, capture_output=True, text=True, cwd=project
    )
    assert run.returncode == 1 and '<testsuite name="short"' in run.stdout
    env["GRADSCOPE_ARGS"] = 'short --ignore "vanishing-gradient" --fail-on "vanishing,*"'
    env["GRADSCOPE_FORMAT"] = ""  # the configuration's format, else text
    run = subprocess.run(
        ["bash", "-c", action_script()], env=env, capture_output=True, text=True, cwd=project
    )
    assert run.returncode == 2 and "--fail-on 'vanishing,*'" in run.stderr  # quoted, unexpanded
    env["GRADSCOPE_ARGS"] = 'short --ignore "vanishing-gradient"'
    run = subprocess.run(
        ["bash", "-c", action_script()], env=env, capture_output=True, text=True, cwd=project
    )
    assert run.returncode == 0 and "gradscope check" in run.stdout


def test_the_pre_commit_hook_runs_gradscope_check():
    hooks = (Path(__file__).parents[1] / ".pre-commit-hooks.yaml").read_text()
    assert "id: gradscope-check\n" in hooks and "entry: gradscope check" in hooks
    assert "pass_filenames: false" in hooks


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--update-baseline"], "--update-baseline needs --baseline FILE"),
        (["--baseline", "absent.json"], "no such file; write one with --update-baseline"),
        (["--baseline", "rnn.pt"], "not a JSON report"),
        (["--baseline", "b.json", "--regression-tolerance", "1.5"], "must lie in [0, 1)"),
        (["--format", "yaml"], "--format 'yaml': choose one of text, json, markdown"),
        (["--output", "rnn.pt/r.md"], "--output rnn.pt/r.md: cannot write it"),
        (["--config", "nowhere.toml"], "--config nowhere.toml: no such file"),
    ],
)
def test_every_refusal_is_exit_2_on_one_line(project, capsys, args, message):
    rnn_checkpoint(project / "rnn.pt", 0.99)
    main(["analyze", "rnn.pt", "--steps", "8", "--baseline", "b.json", "--update-baseline"])
    capsys.readouterr()
    assert main(["analyze", "rnn.pt", "--steps", "8", *args]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error


def test_check_reads_each_models_baseline_and_ignores_from_the_config(project, capsys):
    rnn_checkpoint(project / "rnn.pt", 0.99)
    main(["analyze", "rnn.pt", "--steps", str(STEPS), "--baseline", "b.json", "--update-baseline"])
    rnn_checkpoint(project / "rnn.pt", 0.97)
    (project / "pyproject.toml").write_text(
        f"[tool.gradscope]\nsteps = {STEPS}\n"
        '[[tool.gradscope.models]]\nname = "rnn"\npath = "rnn.pt"\nbaseline = "b.json"\n'
    )
    capsys.readouterr()
    assert main(["check"]) == 1
    assert "worse than in the baseline" in capsys.readouterr().out
    (project / "pyproject.toml").write_text(
        f'[tool.gradscope]\nsteps = {STEPS}\nignore = ["regression"]\n'
        '[[tool.gradscope.models]]\nname = "rnn"\npath = "rnn.pt"\nbaseline = "b.json"\n'
    )
    assert main(["check"]) == 0


def test_check_without_models_says_how_to_list_them(project, capsys):
    (project / "pyproject.toml").write_text("[tool.gradscope]\nsteps = 10\n")
    assert main(["check"]) == 2
    assert "no models to check; add one [[tool.gradscope.models]]" in capsys.readouterr().err


def test_regressions_show_on_their_part_in_every_format(project, capsys):
    args = ["analyze", "rnn.pt", "--steps", str(STEPS), "--baseline", "b.json"]
    rnn_checkpoint(project / "rnn.pt", 0.99)
    main([*args, "--update-baseline"])
    rnn_checkpoint(project / "rnn.pt", 0.97)
    capsys.readouterr()
    main([*args, "-f", "junit"])
    from xml.etree import ElementTree

    root = ElementTree.fromstring(capsys.readouterr().out.split("\n", 1)[1])
    failing = [
        case.get("name") for case in root.iter("testcase") if case.find("failure") is not None
    ]
    assert failing == ["(model)"]  # the core's own case, not coverage
    main([*args, "-f", "markdown"])
    markdown = capsys.readouterr().out
    assert markdown.startswith("### gradscope: healthy, worse than the baseline")
    assert "| (model) | memory horizon |" in markdown and "**worse**" in markdown
    main(args)
    assert "Against the baseline b.json" in capsys.readouterr().out


def test_a_baseline_of_another_kind_of_cell_or_other_settings_is_refused(project, capsys):
    torch.manual_seed(0)
    torch.save(nn.LSTM(8, 8).state_dict(), project / "lstm.pt")
    rnn_checkpoint(project / "rnn.pt", 0.99)
    main(["analyze", "lstm.pt", "--steps", "8", "--baseline", "b.json", "--update-baseline"])
    capsys.readouterr()
    assert main(["analyze", "rnn.pt", "--steps", "8", "--baseline", "b.json"]) == 2
    assert "is a report of another model" in capsys.readouterr().err
    args = ["analyze", "lstm.pt", "--steps", "8", "--baseline", "b.json", "--epsilon", "0.1"]
    assert main(args) == 2
    assert "was measured with epsilon 0.001, this run with 0.1" in capsys.readouterr().err


def test_a_step_summary_that_cannot_be_written_is_a_warning_not_the_outcome(
    project, capsys, monkeypatch
):
    rnn_checkpoint(project / "rnn.pt", 0.5)
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(project / "missing" / "summary.md"))
    assert main(["analyze", "rnn.pt", "--steps", str(STEPS)]) == 1
    assert "warning: cannot append to GITHUB_STEP_SUMMARY" in capsys.readouterr().err


def test_output_makes_its_folder(project, capsys):
    rnn_checkpoint(project / "rnn.pt", 0.99)
    assert main(["analyze", "rnn.pt", "--steps", "8", "-f", "junit", "--output", "r/j.xml"]) == 0
    assert (project / "r" / "j.xml").is_file()


def test_an_ignore_no_finding_can_match_is_refused(project, capsys):
    rnn_checkpoint(project / "rnn.pt", 0.5)
    assert main(["analyze", "rnn.pt", "--steps", "8", "--ignore", "vanishing"]) == 2
    assert "no finding has that id; the ids are vanishing-gradient" in capsys.readouterr().err


def test_check_from_a_subfolder_reads_paths_from_the_config_and_lists_ignores(
    project, capsys, monkeypatch
):
    rnn_checkpoint(project / "rnn.pt", 0.5)
    (project / "pyproject.toml").write_text(
        f'[tool.gradscope]\nsteps = {STEPS}\noutput = "reports/r.md"\nformat = "markdown"\n'
        'ignore = ["vanishing-gradient"]\n'
        '[[tool.gradscope.models]]\nname = "rnn"\npath = "rnn.pt"\n'
    )
    (project / "src" / "deep").mkdir(parents=True)
    monkeypatch.chdir(project / "src" / "deep")
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert "rnn: ○ ignored (vanishing-gradient)" in " ".join(out.split())
    summary = (project / "reports" / "r.md").read_text()
    assert "ignored findings" in summary and "- ignored `vanishing-gradient`" in summary


def test_pytorch_deprecations_from_its_own_internals_never_reach_the_user(project):
    import warnings

    import gradscope

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = gradscope.analyze(nn.LSTM(4, 8, batch_first=True), steps=8)
    assert report.recurrent
