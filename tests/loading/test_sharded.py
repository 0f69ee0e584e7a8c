"""Checkpoints in several files: sharded safetensors (folder or index) and DCP folders.

Each is saved from a module here and must give exactly the module's weights; the safetensors
shards are read lazily (only the shards holding the tensors asked for); the bad cases are
one-line errors that say what to do.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import safetensors
import torch
from safetensors.torch import save_file
from torch import nn

import gradscope
from gradscope.errors import GradscopeError
from gradscope.loading import files, load_model
from gradscope.loading.distributed import distributed_tensor_names, read_distributed
from gradscope.loading.shards import INDEX_NAME, ShardedSafetensors, checkpoint_in, open_sharded
from gradscope.options import LoadOptions

from tests.helpers.checkpoints import SpeakerEncoder
from tests.helpers.formats import assert_same_dynamics, one_line_error, seeded

ANALYSIS_STEPS = 10
ENCODER = "tests.helpers.checkpoints:SpeakerEncoder"


def two_layer_lstm() -> nn.LSTM:
    return seeded(lambda: nn.LSTM(3, 5, 2))


def save_shards(
    state_dict: dict[str, torch.Tensor],
    folder: Path,
    shards: int = 3,
    index: bool = True,
    metadata: dict[str, str] | None = None,
) -> Path:
    """``state_dict`` in ``shards`` safetensors files (consecutive keys each), as Hugging Face
    shards them, with ``model.safetensors.index.json`` beside them unless ``index`` is False."""
    folder.mkdir(exist_ok=True)
    names = list(state_dict)
    size = -(-len(names) // shards)
    weight_map = {}
    for number in range(shards):
        shard = f"model-{number + 1:05d}-of-{shards:05d}.safetensors"
        part = names[number * size : (number + 1) * size]
        tensors = {name: state_dict[name].contiguous() for name in part}
        save_file(tensors, str(folder / shard), metadata=metadata or {"format": "pt"})
        weight_map |= dict.fromkeys(part, shard)
    if index:
        content = {"metadata": {"total_size": 4 * len(names)}, "weight_map": weight_map}
        (folder / INDEX_NAME).write_text(json.dumps(content))
    return folder


def save_dcp(state: dict, folder: Path) -> Path:
    """``state`` as a torch.distributed.checkpoint folder, written by this one process."""
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled ...": one process
        dcp.save(state, checkpoint_id=str(folder), no_dist=True)
    return folder


def assert_same_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype, name
        assert torch.equal(got[name], tensor), name


def refusal(path: Path, **options) -> str:
    """The one-line message of the GradscopeError that loading ``path`` raises."""
    with pytest.raises(GradscopeError) as caught:
        load_model(path, LoadOptions(**options))
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400, message
    return message


@pytest.fixture
def opened(monkeypatch) -> list[str]:
    """The file names ``safetensors.safe_open`` opens from now on, in order."""
    names: list[str] = []
    original = safetensors.safe_open

    def counting(path, *args, **kwargs):
        names.append(Path(path).name)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(safetensors, "safe_open", counting)
    return names


# --- sharded safetensors -------------------------------------------------------------------------


@pytest.mark.parametrize("given", ["folder", "index"])
def test_sharded_lstm_gives_the_module_weights(tmp_path, given):
    module = two_layer_lstm()
    folder = save_shards(module.state_dict(), tmp_path / "lstm")
    path = folder if given == "folder" else folder / INDEX_NAME

    loaded = load_model(path)

    assert loaded.checkpoint_kind == "sharded-safetensors"
    assert [part.module.__class__ for part in loaded.parts] == [nn.LSTM]
    assert_same_weights(loaded.parts[0].module.state_dict(), module.state_dict())


def test_sharded_with_its_class_fills_every_weight(tmp_path):
    module = seeded(lambda: SpeakerEncoder(n_mels=4, hidden=6))
    folder = save_shards(module.state_dict(), tmp_path / "encoder")

    loaded = load_model(folder, LoadOptions(model=ENCODER, model_args='{"n_mels": 4, "hidden": 6}'))

    assert_same_weights(loaded.module.state_dict(), module.state_dict())


def test_shards_read_as_the_one_file_would(tmp_path):
    state_dict = seeded(lambda: SpeakerEncoder(n_mels=4, hidden=6)).state_dict()
    single = tmp_path / "model.safetensors"
    save_file(state_dict, str(single), metadata={"format": "pt"})
    folder = save_shards(state_dict, tmp_path / "shards")

    whole, whole_metadata = files.read_safetensors(single)
    sharded = open_sharded(folder)

    assert_same_weights(sharded.read(), whole)
    assert sharded.metadata() == whole_metadata == {"format": "pt"}


def test_a_folder_of_shards_without_an_index(tmp_path):
    module = two_layer_lstm()
    folder = save_shards(module.state_dict(), tmp_path / "lstm", index=False)

    assert checkpoint_in(folder) == (files.SHARDED, folder)
    assert_same_weights(load_model(folder).parts[0].module.state_dict(), module.state_dict())


def test_a_folder_with_one_safetensors_file_reads_that_file(tmp_path):
    module = two_layer_lstm()
    (tmp_path / "run").mkdir()
    save_file(module.state_dict(), str(tmp_path / "run" / "weights.safetensors"))

    loaded = load_model(tmp_path / "run")

    assert loaded.checkpoint_kind == "safetensors"
    assert loaded.path == str(tmp_path / "run" / "weights.safetensors")
    assert_same_weights(loaded.parts[0].module.state_dict(), module.state_dict())


def test_sharded_lstm_is_analysed_end_to_end(tmp_path):
    module = two_layer_lstm()
    folder = save_shards(module.state_dict(), tmp_path / "lstm")

    report = gradscope.analyze(folder, steps=ANALYSIS_STEPS, what_if=False)

    assert report.model.checkpoint_kind == "sharded-safetensors"
    direct = gradscope.analyze(module, steps=ANALYSIS_STEPS, what_if=False)
    for got, want in zip(report.recurrent, direct.recurrent, strict=True):
        assert_same_dynamics(got, want)


def test_shard_metadata_names_the_class_as_a_single_file_does(tmp_path):
    module = seeded(lambda: SpeakerEncoder(n_mels=4, hidden=6))
    metadata = {"model_class": ENCODER, "model_args": '{"n_mels": 4, "hidden": 6}'}
    folder = save_shards(module.state_dict(), tmp_path / "encoder", metadata=metadata)

    untrusted = load_model(folder)
    trusted = load_model(folder, LoadOptions(trust=True))

    assert untrusted.module is None
    assert any(f"--model {ENCODER}" in note for note in untrusted.notes)
    assert trusted.describe().class_name == "SpeakerEncoder"
    assert_same_weights(trusted.module.state_dict(), module.state_dict())


# --- laziness ------------------------------------------------------------------------------------


def test_keys_come_from_the_index_without_opening_a_shard(tmp_path, opened):
    state_dict = two_layer_lstm().state_dict()
    folder = save_shards(state_dict, tmp_path / "lstm")

    sharded = open_sharded(folder / INDEX_NAME)

    assert list(sharded.keys()) == sorted(state_dict)  # as a single file lists them
    assert len(sharded) == len(state_dict) and "weight_hh_l1" in sharded
    assert "missing" not in sharded
    assert opened == []


def test_reading_a_subset_opens_only_its_shards(tmp_path, opened):
    state_dict = two_layer_lstm().state_dict()
    folder = save_shards(state_dict, tmp_path / "lstm")
    first, second, third = sorted(folder.glob("*.safetensors"))
    third.write_bytes(b"not a shard at all")  # an unrelated shard: damaged
    second.unlink()  # and another: gone
    sharded = open_sharded(folder)
    wanted = [name for name in state_dict if sharded.shard_of(name) == first]

    subset = sharded.read(wanted)
    one = sharded[wanted[-1]]

    assert_same_weights(subset, {name: state_dict[name] for name in wanted})
    assert torch.equal(one, state_dict[wanted[-1]])
    assert opened == [first.name, first.name]  # once for the subset, once for the one tensor
    with pytest.raises(GradscopeError, match=second.name):
        sharded.read()
    with pytest.raises(KeyError):
        sharded.read(["not.a.tensor"])


# --- torch.distributed.checkpoint ----------------------------------------------------------------


def test_dcp_lstm_gives_the_module_weights(tmp_path):
    module = two_layer_lstm()
    optimizer = torch.optim.Adam(module.parameters())
    module(torch.randn(4, 2, 3))[0].sum().backward()
    optimizer.step()
    state = {"model": module.state_dict(), "optim": optimizer.state_dict(), "epoch": 3}
    folder = save_dcp(state, tmp_path / "dcp")

    loaded = load_model(folder, LoadOptions(trust=True))

    assert loaded.checkpoint_kind == "distributed-checkpoint"
    assert "weights taken from the 'model' entry of the checkpoint" in loaded.notes
    assert_same_weights(loaded.parts[0].module.state_dict(), module.state_dict())


def test_dcp_with_its_class_fills_every_weight(tmp_path):
    module = seeded(lambda: SpeakerEncoder(n_mels=4, hidden=6))
    folder = save_dcp(module.state_dict(), tmp_path / "dcp")

    loaded = load_model(
        folder, LoadOptions(trust=True, model=ENCODER, model_args='{"n_mels": 4, "hidden": 6}')
    )

    assert_same_weights(loaded.module.state_dict(), module.state_dict())


def test_dcp_lstm_is_analysed_end_to_end(tmp_path):
    module = two_layer_lstm()
    folder = save_dcp(module.state_dict(), tmp_path / "dcp")

    report = gradscope.analyze(folder, steps=ANALYSIS_STEPS, what_if=False, trust=True)

    assert report.model.checkpoint_kind == "distributed-checkpoint"
    direct = gradscope.analyze(module, steps=ANALYSIS_STEPS, what_if=False)
    for got, want in zip(report.recurrent, direct.recurrent, strict=True):
        assert_same_dynamics(got, want)


def test_dcp_subset_reads_only_the_tensors_named(tmp_path):
    module = two_layer_lstm()
    folder = save_dcp({"model": module.state_dict(), "step": 7}, tmp_path / "dcp")

    names = distributed_tensor_names(folder, trust=True)
    subset = read_distributed(folder, True, ["model.weight_hh_l1"])

    assert names == [f"model.{name}" for name in module.state_dict()]  # "step" is no tensor
    assert list(subset) == ["model.weight_hh_l1"]
    assert torch.equal(subset["model.weight_hh_l1"], module.weight_hh_l1)
    with pytest.raises(KeyError):
        read_distributed(folder, True, ["step"])


# --- what cannot be read -------------------------------------------------------------------------


def test_dcp_needs_trust_because_torch_unpickles_its_metadata(tmp_path):
    folder = save_dcp(two_layer_lstm().state_dict(), tmp_path / "dcp")

    message = refusal(folder)

    assert str(folder) in message
    assert "pickle" in message and "--trust" in message


def test_dcp_with_a_missing_data_file(tmp_path):
    folder = save_dcp(two_layer_lstm().state_dict(), tmp_path / "dcp")
    for data in folder.glob("*.distcp"):
        data.unlink()

    message = refusal(folder, trust=True)

    assert "missing or damaged" in message and str(folder) in message


def test_dcp_data_without_metadata(tmp_path):
    folder = save_dcp(two_layer_lstm().state_dict(), tmp_path / "dcp")
    (folder / ".metadata").unlink()

    assert ".metadata" in refusal(folder)


def test_dcp_with_damaged_metadata(tmp_path):
    folder = save_dcp(two_layer_lstm().state_dict(), tmp_path / "dcp")
    (folder / ".metadata").write_bytes(b"\x80\x04garbage")

    assert "not a readable torch.distributed.checkpoint metadata" in refusal(folder, trust=True)


def test_a_folder_with_nothing_readable(tmp_path):
    (tmp_path / "notes.txt").write_text("hidden 128\n")

    message = refusal(tmp_path)

    assert str(tmp_path) in message and "nothing gradscope reads" in message
    assert INDEX_NAME in message and "torch.distributed.checkpoint" in message


def test_a_folder_holding_a_torch_file_names_it(tmp_path):
    torch.save(two_layer_lstm().state_dict(), tmp_path / "model.pt")

    assert "give the checkpoint file inside it (model.pt)" in refusal(tmp_path)


def test_an_index_naming_a_missing_shard(tmp_path):
    folder = save_shards(two_layer_lstm().state_dict(), tmp_path / "lstm")
    (folder / "model-00002-of-00003.safetensors").unlink()

    for path in (folder, folder / INDEX_NAME):
        message = refusal(path)
        assert "model-00002-of-00003.safetensors" in message and "copy every shard" in message


def test_a_shard_folder_lacking_a_shard_without_an_index(tmp_path):
    folder = save_shards(two_layer_lstm().state_dict(), tmp_path / "lstm", index=False)
    (folder / "model-00003-of-00003.safetensors").unlink()

    message = refusal(folder)

    assert "model-00003-of-00003.safetensors" in message and "copy every shard" in message


def test_a_shard_that_is_a_torch_file(tmp_path):
    state_dict = two_layer_lstm().state_dict()
    folder = tmp_path / "bin"
    folder.mkdir()
    torch.save(state_dict, folder / "pytorch_model-00001-of-00001.bin")
    weight_map = dict.fromkeys(state_dict, "pytorch_model-00001-of-00001.bin")
    index = folder / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

    message = refusal(index)

    assert "is a torch.save file" in message and "safetensors" in message


def test_a_damaged_shard(tmp_path):
    folder = save_shards(two_layer_lstm().state_dict(), tmp_path / "lstm")
    shard = folder / "model-00001-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[:-8])

    message = refusal(folder)

    assert shard.name in message and "not a readable safetensors file" in message


def test_an_index_cannot_name_a_file_outside_its_folder(tmp_path):
    folder = tmp_path / "index"
    folder.mkdir()
    save_file({"weight": torch.zeros(2)}, str(tmp_path / "outside.safetensors"))
    (folder / INDEX_NAME).write_text(json.dumps({"weight_map": {"w": "../outside.safetensors"}}))

    assert "outside the index's folder" in refusal(folder)


def test_an_index_without_a_weight_map_dict(tmp_path):
    index = tmp_path / INDEX_NAME
    index.write_text(json.dumps({"weight_map": ["model-00001-of-00001.safetensors"]}))

    assert "not a safetensors index" in refusal(index)


def test_a_bad_folder_through_the_cli_is_one_line(tmp_path, capsys):
    message = one_line_error(["analyze", str(tmp_path)], capsys)

    assert message.startswith("gradscope: error: ") and str(tmp_path) in message


def test_only_reads_just_the_selected_modules_shards(tmp_path, monkeypatch):
    torch.manual_seed(0)
    state = {
        **{f"encoder.{k}": v for k, v in nn.LSTM(4, 8).state_dict().items()},
        **{f"decoder.{k}": v for k, v in nn.GRU(8, 6).state_dict().items()},
    }
    folder = tmp_path / "sharded"
    folder.mkdir()
    weight_map = {}
    for shard, prefix in (
        ("model-00001-of-00002.safetensors", "encoder."),
        ("model-00002-of-00002.safetensors", "decoder."),
    ):
        part = {k: v.contiguous() for k, v in state.items() if k.startswith(prefix)}
        save_file(part, folder / shard)
        weight_map |= dict.fromkeys(part, shard)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    read = []
    original = ShardedSafetensors.read

    def counting(self, names=None):
        tensors = original(self, names)
        read.extend(tensors)
        return tensors

    monkeypatch.setattr(ShardedSafetensors, "read", counting)
    report = gradscope.analyze(folder, steps=6, what_if=False, only="decoder")
    assert read and all(name.startswith("decoder.") for name in read)
    assert [core.name for core in report.recurrent] == ["decoder"]
    (left_out,) = report.coverage.not_measured
    assert left_out.reason == "left out by --only"
    assert left_out.parameters == sum(
        v.numel() for k, v in state.items() if k.startswith("encoder.")
    )
    assert not report.complete


def test_only_reads_just_the_selected_modules_of_a_dcp_folder(tmp_path):
    torch.manual_seed(0)
    model = {
        **{f"encoder.{k}": v for k, v in nn.LSTM(4, 8).state_dict().items()},
        **{f"decoder.{k}": v for k, v in nn.GRU(8, 6).state_dict().items()},
    }
    optimizer = {"state.0.exp_avg": torch.ones(50)}
    folder = save_dcp({"model": model, "optim": optimizer}, tmp_path / "dcp")
    report = gradscope.analyze(folder, steps=6, what_if=False, trust=True, only="decoder")
    assert [core.name for core in report.recurrent] == ["decoder"]
    (left_out,) = report.coverage.not_measured
    assert left_out.reason == "left out by --only"
    assert left_out.modules == ["encoder"]
    assert left_out.parameters == sum(v.numel() for k, v in model.items() if k.startswith("enc"))
    with pytest.raises(GradscopeError, match="--only selects none of the tensors"):
        gradscope.analyze(folder, steps=6, what_if=False, trust=True, only="attention")


def test_only_on_a_flat_dcp_folder_reports_every_module_left_out(tmp_path):
    torch.manual_seed(0)
    model = {
        **{f"encoder.{k}": v for k, v in nn.LSTM(4, 8).state_dict().items()},
        **{f"decoder.{k}": v for k, v in nn.GRU(8, 6).state_dict().items()},
        "head.weight": torch.ones(3, 6),
    }
    folder = save_dcp(model, tmp_path / "dcp")
    report = gradscope.analyze(folder, steps=6, what_if=False, trust=True, only="encoder")
    assert [core.name for core in report.recurrent] == ["encoder"]
    (left_out,) = report.coverage.not_measured
    assert sorted(left_out.modules) == ["decoder", "head"]
    unread = sum(v.numel() for k, v in model.items() if not k.startswith("encoder."))
    assert left_out.parameters == unread
    assert report.coverage.parameters == sum(v.numel() for v in model.values())
