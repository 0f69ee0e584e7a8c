"""Loading checkpoints safely: what loads without --trust, what is refused, and how it is said.

Every checkpoint is built here, in ``tmp_path``. Refusals are :class:`GradscopeError` with a
one-line message that names the problem and the way out; a file that holds code is never run
unless the user passes ``--trust``.
"""

from __future__ import annotations

import itertools
import json
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

import gradscope
from gradscope.cli import main
from gradscope.errors import GradscopeError
from gradscope.loading import load_model
from gradscope.options import LoadOptions

#: The global a pickled ``os.system`` is written as ("posix.system" on Linux and macOS).
OS_SYSTEM = f"{os.system.__module__}.{os.system.__name__}"


class UserRNN(nn.Module):
    """A user's own model class: pickling it makes the checkpoint code."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(4, 8, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0])


class RunsShell:
    """A pickle payload: unpickling it runs ``command`` in a shell."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def assert_one_line(message: str) -> None:
    assert message
    assert "\n" not in message and "\r" not in message, message
    assert "Traceback" not in message


def refusal(path: Path, **options) -> str:
    """The message of the GradscopeError that loading ``path`` raises."""
    with pytest.raises(GradscopeError) as caught:
        load_model(path, LoadOptions(**options))
    message = str(caught.value)
    assert_one_line(message)
    return message


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m gradscope ARGS`` in a fresh interpreter, as a user would run it."""
    env = dict(os.environ, NO_COLOR="1")
    return subprocess.run(
        [sys.executable, "-m", "gradscope", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# --- whole pickled modules -------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory",
    [
        lambda: nn.GRU(4, 8),
        lambda: nn.Sequential(nn.LSTM(4, 8, num_layers=2, bidirectional=True)),
        lambda: nn.RNN(4, 8, batch_first=True, nonlinearity="relu"),
    ],
    ids=["gru", "sequential-lstm", "rnn-relu"],
)
def test_pickled_torch_nn_module_loads_without_trust(tmp_path, factory):
    torch.manual_seed(0)
    model = factory()
    path = tmp_path / "model.pt"
    torch.save(model, path)

    loaded = load_model(path)

    assert loaded.checkpoint_kind == "pickled-module"
    assert loaded.path == str(path)
    assert type(loaded.module) is type(model)
    original, restored = model.state_dict(), loaded.module.state_dict()
    assert original.keys() == restored.keys()
    for key, value in original.items():
        assert torch.equal(value, restored[key]), key


def test_pickled_torch_nn_module_is_analysed_without_trust(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "gru.pt"
    torch.save(nn.GRU(4, 8), path)

    report = gradscope.analyze(path, steps=20)

    assert report.model.checkpoint_kind == "pickled-module"
    assert report.model.class_name == "GRU"
    assert [core.cell for core in report.recurrent] == ["gru"]


def test_legacy_format_state_dict_loads_without_trust(user_code, tmp_path):
    """torch.save(..., _use_new_zipfile_serialization=False), as PyTorch < 1.6 wrote files."""
    path = tmp_path / "legacy.pt"
    torch.save(tiny_state_dict(4, 6), path, _use_new_zipfile_serialization=False)

    loaded = load_model(path, LoadOptions(model="code/nets.py:TinyRNN", model_args=MODEL_ARGS))

    assert loaded.checkpoint_kind == "state-dict"
    assert torch.equal(loaded.module.rnn.weight_hh_l0, tiny_state_dict(4, 6)["rnn.weight_hh_l0"])


def test_legacy_format_whole_module_needs_trust(tmp_path):
    """A whole module in the legacy format embeds class source: weights-only torch cannot read
    it, so it is code, and --trust is the way (the refusal must say so, not "unreadable")."""
    model = nn.Sequential(nn.GRU(4, 8))
    path = tmp_path / "legacy.pt"
    torch.save(model, path, _use_new_zipfile_serialization=False)

    message = refusal(path)
    assert "--trust" in message

    loaded = load_model(path, LoadOptions(trust=True))
    assert loaded.checkpoint_kind == "pickled-module"
    assert torch.equal(loaded.module[0].weight_hh_l0, model[0].weight_hh_l0)


def test_user_class_is_refused_without_trust_and_loads_with_it(tmp_path):
    torch.manual_seed(0)
    model = UserRNN()
    path = tmp_path / "user.pt"
    torch.save(model, path)

    message = refusal(path)
    assert f"{UserRNN.__module__}.UserRNN" in message
    assert "--trust" in message
    # torch.nn's own classes in the same file are allowed, so they are not listed as the problem
    assert "torch.nn.modules.rnn.RNN" not in message

    loaded = load_model(path, LoadOptions(trust=True))
    assert loaded.checkpoint_kind == "pickled-module"
    assert isinstance(loaded.module, UserRNN)
    assert torch.equal(loaded.module.rnn.weight_hh_l0, model.rnn.weight_hh_l0)


def test_user_class_refusal_through_the_cli(tmp_path, capsys):
    path = tmp_path / "user.pt"
    torch.save(UserRNN(), path)

    code = main(["analyze", str(path), "--steps", "20"])

    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert f"{UserRNN.__module__}.UserRNN" in captured.err
    assert "--trust" in captured.err

    code = main(["analyze", str(path), "--steps", "20", "--trust", "--format", "json"])
    captured = capsys.readouterr()
    assert code in (0, 1)
    report = json.loads(captured.out)
    assert report["model"]["format"] == "pickled-module"
    assert report["model"]["class"] == "UserRNN"


def test_model_option_is_noted_as_ignored_for_a_whole_module(tmp_path):
    path = tmp_path / "gru.pt"
    torch.save(nn.GRU(4, 8), path)

    loaded = load_model(path, LoadOptions(model="somewhere:Else"))

    assert loaded.checkpoint_kind == "pickled-module"
    assert any("--model" in note and "ignored" in note for note in loaded.notes)


def test_reading_maps_to_cpu_and_stays_weights_only(tmp_path, monkeypatch):
    path = tmp_path / "gru.pt"
    torch.save(nn.GRU(4, 8).state_dict(), path)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    loaded = load_model(path)  # a state_dict without --model: rebuilt from the weights
    assert [type(part.module) for part in loaded.parts] == [nn.GRU]
    assert calls
    assert all(str(call.get("map_location")) == "cpu" for call in calls)
    assert all(call.get("weights_only") is True for call in calls)


# --- code in the pickle is never run ---------------------------------------------------------


def _save_shell_payload(path: Path, marker: Path, layout: str) -> None:
    payload = RunsShell(f"touch {marker}")
    if layout == "bare":
        torch.save(payload, path)
    elif layout == "in-state-dict":
        torch.save({"rnn.weight_hh_l0": torch.zeros(8, 8), "rnn.bias": payload}, path)
    elif layout == "legacy-format":
        torch.save(
            {"weight": torch.zeros(2), "x": payload}, path, _use_new_zipfile_serialization=False
        )
    elif layout == "plain-pickle":
        with path.open("wb") as file:
            pickle.dump(payload, file, protocol=2)
    else:  # pragma: no cover - a typo in the parameters
        raise ValueError(layout)


def test_the_shell_payload_is_live(tmp_path):
    """The payload the safety tests use really runs when unpickled without care."""
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pt"
    _save_shell_payload(path, marker, "bare")
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("layout", ["bare", "in-state-dict", "legacy-format", "plain-pickle"])
def test_code_in_a_checkpoint_is_refused_and_never_run(tmp_path, layout):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pt"
    _save_shell_payload(path, marker, layout)

    result = run_cli("analyze", str(path), cwd=tmp_path)

    assert not marker.exists(), "unpickling ran the payload"
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("gradscope: error: ")
    assert OS_SYSTEM in result.stderr
    assert "--trust" in result.stderr


def test_code_in_a_modern_pickle_is_refused_and_never_run(tmp_path):
    """A plain pickle (protocol 5), not written by torch.save: unreadable, and never run."""
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pkl"
    with path.open("wb") as file:
        pickle.dump(RunsShell(f"touch {marker}"), file)

    result = run_cli("analyze", str(path), cwd=tmp_path)

    assert not marker.exists(), "unpickling ran the payload"
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("gradscope: error: ")


def test_code_in_a_checkpoint_is_refused_by_the_api(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pt"
    _save_shell_payload(path, marker, "bare")

    message = refusal(path)
    with pytest.raises(GradscopeError):
        gradscope.analyze(path, steps=20)

    assert OS_SYSTEM in message
    assert not marker.exists()


# --- state_dict + --model --------------------------------------------------------------------

USER_CODE = '''
"""Model code a user keeps next to the checkpoint."""

from torch import nn


class TinyRNN(nn.Module):
    def __init__(self, input_size=4, hidden_size=8):
        super().__init__()
        self.rnn = nn.RNN(input_size, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, 2)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


class Picky(nn.Module):
    def __init__(self, size=8):
        super().__init__()
        raise ValueError("size must be odd\\nand this is a second line")


def not_a_class():
    return None
'''

_package_numbers = itertools.count()


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    """A package ``gs_user_pkgN.nets`` and a file ``code/nets.py`` in tmp_path, which is the cwd.

    Yields the package name. sys.path and sys.modules are restored afterwards.
    """
    package = f"gs_user_pkg{next(_package_numbers)}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / package / "nets.py").write_text(USER_CODE)
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "nets.py").write_text(USER_CODE)
    monkeypatch.chdir(tmp_path)
    # without the cwd on sys.path, the loader must add it itself, as the console script does
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    yield package
    for name in [name for name in sys.modules if name.startswith(package)]:
        del sys.modules[name]


def tiny_state_dict(input_size: int = 4, hidden_size: int = 8) -> dict:
    namespace: dict = {}
    exec(compile(USER_CODE, "user_code", "exec"), namespace)
    torch.manual_seed(0)
    return namespace["TinyRNN"](input_size, hidden_size).state_dict()


@pytest.fixture
def state_dict_file(tmp_path) -> Path:
    path = tmp_path / "weights.pt"
    torch.save(tiny_state_dict(4, 6), path)
    return path


MODEL_ARGS = '{"input_size": 4, "hidden_size": 6}'


def test_state_dict_with_package_module_class(user_code, state_dict_file):
    loaded = load_model(
        state_dict_file, LoadOptions(model=f"{user_code}.nets:TinyRNN", model_args=MODEL_ARGS)
    )

    assert loaded.checkpoint_kind == "state-dict"
    assert type(loaded.module).__name__ == "TinyRNN"
    expected = tiny_state_dict(4, 6)
    for key, value in loaded.module.state_dict().items():
        assert torch.equal(value, expected[key]), key


@pytest.mark.parametrize("where", ["relative", "absolute"])
def test_state_dict_with_file_class(user_code, state_dict_file, where):
    file = Path("code/nets.py") if where == "relative" else state_dict_file.parent / "code/nets.py"

    loaded = load_model(
        state_dict_file, LoadOptions(model=f"{file}:TinyRNN", model_args={"hidden_size": 6})
    )

    assert loaded.checkpoint_kind == "state-dict"
    assert loaded.module.rnn.hidden_size == 6


def test_state_dict_through_the_cli(user_code, state_dict_file, capsys):
    code = main(
        [
            "analyze",
            str(state_dict_file),
            "--model",
            "code/nets.py:TinyRNN",
            "--model-args",
            MODEL_ARGS,
            "--steps",
            "20",
            "--format",
            "json",
        ]
    )

    captured = capsys.readouterr()
    assert code in (0, 1), captured.err
    report = json.loads(captured.out)
    assert report["model"]["format"] == "state-dict"
    assert report["model"]["class"] == "TinyRNN"
    assert [core["hidden_size"] for core in report["recurrent"]] == [6]


def test_weights_without_a_recurrent_part_or_model_are_refused(tmp_path):
    path = tmp_path / "mlp.pt"
    torch.save(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1)).state_dict(), path)
    message = refusal(path)
    assert "only weights" in message
    assert "--model" in message


def test_mismatched_keys_are_all_named(user_code, tmp_path):
    weights = tiny_state_dict(4, 8)
    del weights["head.bias"]
    weights["extra.weight"] = torch.zeros(3)
    weights["head.weight"] = torch.zeros(2, 9)
    path = tmp_path / "mismatch.pt"
    torch.save(weights, path)

    message = refusal(path, model="code/nets.py:TinyRNN")

    assert "missing" in message and "head.bias" in message
    assert "unexpected" in message and "extra.weight" in message
    assert "mis-sized" in message and "head.weight" in message
    assert "(2, 9)" in message and "(2, 8)" in message


def test_wrong_model_args_show_as_mis_sized_weights(user_code, state_dict_file):
    message = refusal(
        state_dict_file, model="code/nets.py:TinyRNN", model_args='{"hidden_size": 5}'
    )
    assert "mis-sized" in message
    assert "rnn.weight_hh_l0" in message
    assert "--model-args" in message


@pytest.mark.parametrize(
    ("model", "model_args", "expected"),
    [
        ("code/nets.py:TinyRNN", "{hidden_size: 6}", ["--model-args", "not valid JSON"]),
        ("code/nets.py:TinyRNN", "[4, 6]", ["--model-args", "JSON object"]),
        ("code/nets.py:TinyRNN", '"six"', ["--model-args", "JSON object"]),
        ("code/nets.py", None, ["--model", "package.module:Class"]),
        ("code/nets.py:", None, ["--model", "package.module:Class"]),
        (":TinyRNN", None, ["--model", "package.module:Class"]),
        ("code/missing.py:TinyRNN", None, ["--model", "no such file", "missing.py"]),
        ("code/nets.py:NoSuchClass", None, ["--model", "NoSuchClass"]),
        ("code/nets.py:not_a_class", None, ["--model", "not_a_class"]),
        ("gs_no_such_package.nets:TinyRNN", None, ["--model", "gs_no_such_package"]),
        ("code/nets.py:TinyRNN", '{"bogus": 1}', ["--model", "TinyRNN", "bogus"]),
        ("code/nets.py:Picky", None, ["--model", "Picky", "size must be odd"]),
    ],
    ids=[
        "bad-json",
        "json-list",
        "json-string",
        "no-colon",
        "no-class",
        "no-module",
        "missing-file",
        "missing-class",
        "not-a-class",
        "missing-package",
        "unknown-argument",
        "constructor-raises",
    ],
)
def test_model_option_errors(user_code, state_dict_file, model, model_args, expected):
    message = refusal(state_dict_file, model=model, model_args=model_args)
    for part in expected:
        assert part in message


def test_broken_user_module_is_reported(user_code, state_dict_file, tmp_path):
    (tmp_path / "code" / "broken.py").write_text("import gs_no_such_dependency\n")

    message = refusal(state_dict_file, model="code/broken.py:TinyRNN")

    assert "importing" in message
    assert "gs_no_such_dependency" in message


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model-args", "{oops"], "--model-args"),
        (["--model-args", "[1, 2]"], "--model-args"),
        (["--model", "nocolon"], "--model"),
        (["--model", "code/missing.py:TinyRNN"], "no such file"),
        (["--model", "code/nets.py:Picky"], "size must be odd"),
    ],
    ids=["bad-json", "json-list", "no-colon", "missing-file", "constructor-raises"],
)
def test_model_option_errors_through_the_cli(user_code, state_dict_file, capsys, args, expected):
    if args[:1] == ["--model-args"]:
        args = ["--model", "code/nets.py:TinyRNN", *args]

    code = main(["analyze", str(state_dict_file), "--steps", "20", *args])

    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert captured.err.startswith("gradscope: error: ")
    assert captured.err.count("\n") == 1, captured.err
    assert expected in captured.err


# --- files that are not checkpoints ----------------------------------------------------------


def _real_checkpoint_bytes(tmp_path: Path) -> bytes:
    source = tmp_path / "real.pt"
    torch.save(nn.GRU(4, 8), source)
    return source.read_bytes()


def _make_bad_file(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.pt"
    if kind == "missing":
        pass
    elif kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "random-bytes":
        path.write_bytes(bytes(range(256)) * 16 + os.urandom(512))
    elif kind == "text":
        path.write_text("hidden_size: 128\nnum_layers: 2\n")
    elif kind == "truncated":
        data = _real_checkpoint_bytes(tmp_path)
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncated-legacy":
        source = tmp_path / "legacy.pt"
        torch.save(nn.GRU(4, 8).state_dict(), source, _use_new_zipfile_serialization=False)
        data = source.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "list":
        torch.save([torch.zeros(2), torch.ones(3)], path)
    elif kind == "int":
        torch.save(7, path)
    elif kind == "tensor":
        torch.save(torch.zeros(3, 4), path)
    elif kind == "empty-dict":
        torch.save({}, path)
    elif kind == "mixed-dict":
        torch.save({"weight": torch.zeros(2), "epoch": 3}, path)
    else:  # pragma: no cover - a typo in the parameters
        raise ValueError(kind)
    return path


BAD_FILES = {
    "missing": ["no such file"],
    "directory": ["directory"],
    "empty": ["empty"],
    "random-bytes": ["not a PyTorch checkpoint", "safetensors"],
    "text": ["a text file", "not a PyTorch checkpoint"],
    "truncated": ["damaged zip archive", "save or copy"],
    "truncated-legacy": ["not a readable PyTorch checkpoint"],
    "list": ["holds a list"],
    "int": ["holds a int"],
    "tensor": ["holds a Tensor"],
    "empty-dict": ["holds a dict"],
    "mixed-dict": ["holds only weights", "--model"],
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_bad_files_are_one_line_errors(tmp_path, kind):
    path = _make_bad_file(tmp_path, kind)

    message = refusal(path)

    assert str(path) in message
    for part in BAD_FILES[kind]:
        assert part in message
    # the advice is gradscope's own, never torch's "re-run with weights_only=False"
    assert "weights_only" not in message
    assert len(message) < 400


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "random-bytes", "truncated"])
def test_bad_files_through_the_cli(tmp_path, capsys, kind):
    path = _make_bad_file(tmp_path, kind)

    code = main(["analyze", str(path)])

    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert captured.err.startswith("gradscope: error: ")
    assert captured.err.count("\n") == 1, captured.err
    assert "Traceback" not in captured.err


def test_trust_does_not_hide_bad_files(tmp_path):
    for kind in ("random-bytes", "truncated", "list"):
        path = _make_bad_file(tmp_path, kind)
        message = refusal(path, trust=True)
        assert str(path) in message


def test_trust_with_code_that_is_not_importable_here(tmp_path, monkeypatch):
    """A pickled class whose module is gone: a one-line error, not an AttributeError."""
    module = types.ModuleType("gs_vanishing_module")
    exec(
        "from torch import nn\n"
        "class Gone(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.rnn = nn.GRU(4, 8)\n",
        module.__dict__,
    )
    monkeypatch.setitem(sys.modules, module.__name__, module)
    path = tmp_path / "gone.pt"
    torch.save(module.Gone(), path)
    monkeypatch.delitem(sys.modules, module.__name__)

    message = refusal(path, trust=True)

    assert "gs_vanishing_module" in message
    assert "--model" in message


def test_trust_imports_the_model_class_from_the_working_folder(tmp_path, monkeypatch):
    (tmp_path / "mynets.py").write_text(
        "from torch import nn\n"
        "class Tagger(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.rnn = nn.GRU(3, 4, batch_first=True)\n"
        "    def forward(self, x):\n"
        "        return self.rnn(x)[0]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import mynets

    torch.save(mynets.Tagger(), tmp_path / "tagger.pt")
    monkeypatch.delitem(sys.modules, "mynets")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.chdir(tmp_path)
    loaded = load_model("tagger.pt", LoadOptions(trust=True))
    assert type(loaded.module).__name__ == "Tagger"
