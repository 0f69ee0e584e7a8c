"""Project configuration: discovery, the keys and their kinds, model entries, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from gradscope.config import find_config, load_config
from gradscope.errors import GradscopeError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_the_nearest_pyproject_is_found_from_below_and_not_past_a_repository_root(tmp_path):
    root = tmp_path / "repo"
    (root / ".git").mkdir(parents=True)
    pyproject = write(root / "pyproject.toml", "[tool.gradscope]\nsteps = 50\n")
    below = root / "models" / "rnn"
    below.mkdir(parents=True)
    assert find_config(below) == pyproject
    assert load_config(start=below).options == {"steps": 50}
    write(tmp_path / "pyproject.toml", "[tool.gradscope]\nsteps = 7\n")
    other = tmp_path / "other"
    (other / ".git").mkdir(parents=True)
    assert find_config(other) is None  # the repository root stops the search


def test_no_section_or_no_file_means_no_options(tmp_path):
    write(tmp_path / "pyproject.toml", "[project]\nname = 'x'\n")
    (tmp_path / ".git").mkdir()
    config = load_config(start=tmp_path)
    assert config.options == {} and config.models == () and config.path is not None
    assert load_config(start=tmp_path / "nowhere").options == {}


def test_models_and_a_gradscope_toml_with_top_level_keys(tmp_path):
    path = write(
        tmp_path / "gradscope.toml",
        'epsilon = 1e-4\nfail_on = ["vanishing"]\n\n[[models]]\nname = "encoder"\n'
        'path = "enc.pt"\nhorizon = 200\ncell = "decoder.cell"\n\n[[models]]\npath = "b.pt"\n',
    )
    config = load_config(path)
    assert config.options == {"epsilon": 1e-4, "fail_on": ["vanishing"]}
    first, second = config.models
    assert (first.name, first.path, first.options) == (
        "encoder",
        str(tmp_path / "enc.pt"),  # read from the configuration's folder
        {"horizon": 200, "cell": "decoder.cell"},
    )
    assert (second.name, second.path) == ("b", str(tmp_path / "b.pt"))  # named after its file


def test_paths_and_script_models_are_read_from_the_configurations_folder(tmp_path):
    path = write(
        tmp_path / "proj" / "pyproject.toml",
        '[tool.gradscope]\noutput = "reports/r.xml"\nbaseline = "b.json"\nprobe = "gaussian"\n'
        '[[tool.gradscope.models]]\npath = "m.pt"\nmodel = "nets.py:Net"\nprobe = "x.pt"\n',
    )
    config = load_config(path)
    folder = tmp_path / "proj"
    assert config.options["output"] == str(folder / "reports/r.xml")
    assert config.options["baseline"] == str(folder / "b.json")
    assert config.options["probe"] == "gaussian"
    (model,) = config.models
    assert model.options == {"model": f"{folder / 'nets.py'}:Net", "probe": str(folder / "x.pt")}


def test_a_key_of_the_whole_run_in_a_model_entry_is_refused(tmp_path):
    path = write(
        tmp_path / "pyproject.toml",
        '[tool.gradscope]\n[[tool.gradscope.models]]\npath = "m.pt"\nfail_on = ["exploding"]\n',
    )
    with pytest.raises(GradscopeError, match=r"fail_on in .* applies to the whole run"):
        load_config(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("steps = 'many'", r"steps in \[tool.gradscope\] must be an integer, not 'many'"),
        ("stepz = 5", r"unknown key 'stepz' in \[tool.gradscope\]"),
        ("fail-on = 'vanishing'", r"unknown key 'fail-on' .*did you mean fail_on\?"),
        ("trust = 1", r"trust in \[tool.gradscope\] must be true or false"),
        ("[[tool.gradscope.models]]\nname = 'a'", r"#1 needs a path"),
        (
            "[[tool.gradscope.models]]\npath = 'a.pt'\n[[tool.gradscope.models]]\npath = 'a.pt'",
            r"model names must differ; a repeats",
        ),
        ("steps = [", r"not valid TOML"),
    ],
)
def test_a_bad_key_or_value_is_one_line_naming_the_key_and_the_file(tmp_path, text, message):
    path = write(tmp_path / "pyproject.toml", "[tool.gradscope]\n" + text + "\n")
    with pytest.raises(GradscopeError, match=message) as error:
        load_config(path)
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


def test_a_missing_config_file_is_refused(tmp_path):
    with pytest.raises(GradscopeError, match=r"--config .*no such file"):
        load_config(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("steps = -5", r"\[tool.gradscope\]: steps must be a positive number"),
        ("dtype = 'int8'", r"\[tool.gradscope\]: dtype must be one of float32, float64, float16"),
        ("horizon = 0", r"\[tool.gradscope\]: horizon must be a positive number"),
        ("regression_tolerance = 2.0", r"regression_tolerance must lie in \[0, 1\)"),
        ("[[tool.gradscope.models]]\npath = 'a.pt'\nbatch = 0", r"#1: batch must be a positive"),
    ],
)
def test_a_value_out_of_range_is_refused_before_anything_loads(tmp_path, text, message):
    path = write(tmp_path / "pyproject.toml", "[tool.gradscope]\n" + text + "\n")
    with pytest.raises(GradscopeError, match=message) as error:
        load_config(path)
    assert str(error.value).startswith(str(path))


def test_only_and_max_memory_are_configuration_keys(tmp_path):
    from gradscope.config import analysis_keywords

    path = write(tmp_path / "gradscope.toml", 'only = "decoder"\nmax_memory = "2GB"\n')
    config = load_config(path)
    keywords = analysis_keywords(config.options, set())
    assert keywords == {"only": ("decoder",), "max_memory": "2GB"}
    write(tmp_path / "other.toml", "max_memory = 1000000\n")
    assert load_config(tmp_path / "other.toml").options == {"max_memory": 1000000}
