"""Hugging Face model folders: tiny models built from configs here (no download), saved with
``save_pretrained`` (also sharded), read back as a checkpoint kind of their own."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch

import gradscope
from gradscope.cli import main
from gradscope.probe import Probe
from gradscope.probe.loss import loss_direction

from tests.helpers.hf_folders import as_classifier

transformers = pytest.importorskip("transformers")

VOCAB, WIDTH, POSITIONS = 50, 32, 24


def tiny_gpt2():
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=POSITIONS,
        n_embd=WIDTH,
        n_layer=3,
        n_head=4,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config)


def tiny_bert():
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=WIDTH,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=POSITIONS,
    )
    return transformers.BertModel(config)


def tiny_mamba():
    config = transformers.MambaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        state_size=4,
        num_hidden_layers=2,
        expand=2,
        conv_kernel=4,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return transformers.MambaForCausalLM(config)


def tiny_vit():
    config = transformers.ViTConfig(
        image_size=16,
        patch_size=8,
        hidden_size=WIDTH,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=3,
    )
    return transformers.ViTForImageClassification(config)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Each tiny model saved with save_pretrained; GPT-2 also in shards."""
    root = tmp_path_factory.mktemp("hf")
    saved = {}
    for name, build in [("gpt2", tiny_gpt2), ("bert", tiny_bert), ("mamba", tiny_mamba)]:
        torch.manual_seed(0)
        build().save_pretrained(root / name)
        saved[name] = root / name
    torch.manual_seed(0)
    tiny_gpt2().save_pretrained(root / "gpt2-sharded", max_shard_size="40KB")
    saved["gpt2-sharded"] = root / "gpt2-sharded"
    return saved


def analysed(path, **options):
    return gradscope.analyze(str(path), what_if=False, **options)


def test_the_folder_its_config_and_its_sharded_index_all_load(folders):
    sharded = folders["gpt2-sharded"]
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("model-*.safetensors"))) > 1
    paths = [
        folders["gpt2"],
        folders["gpt2"] / "config.json",
        folders["gpt2"] / "model.safetensors",
        sharded,
        sharded / "model.safetensors.index.json",
    ]
    reports = [analysed(path) for path in paths]
    for report in reports:
        assert report.model.checkpoint_kind == "hugging-face"
        assert report.model.class_name == "GPT2LMHeadModel"
        assert report.settings.dtype == "float32"  # the config's dtype
    # the same weights, however the folder is named: the same numbers
    expected = [layer.grad_norm for layer in reports[0].layers]
    for report in reports[1:]:
        assert [layer.grad_norm for layer in report.layers] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("name", "blocks"),
    [
        ("gpt2", [f"transformer.h.{i}" for i in range(3)]),
        ("bert", [f"encoder.layer.{i}" for i in range(2)]),
        ("mamba", [f"backbone.layers.{i}" for i in range(2)]),
    ],
)
def test_the_depth_view_finds_the_blocks_and_their_skips(folders, name, blocks):
    report = analysed(folders[name])
    by_name = {layer.name.split("+")[0]: layer for layer in report.layers}
    for block in blocks:
        assert block in by_name, [layer.name for layer in report.layers]
        assert by_name[block].residual  # x + f(x), found by the Jacobian
    assert report.sequence is not None and len(report.sequence.grad_norm_by_lag) > 1


def test_the_sequence_views_gradients_equal_autograds(folders):
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(3))
    report = gradscope.analyze(str(folders["gpt2"]), ids, what_if=False)
    model = transformers.GPT2LMHeadModel.from_pretrained(folders["gpt2"]).eval()
    captured = {}

    def keep(module, inputs, output):
        output.retain_grad()
        captured["e"] = output

    handle = model.transformer.wte.register_forward_hook(keep)
    logits = model(ids).logits[:, -1]
    handle.remove()
    w = loss_direction(VOCAB, Probe(ids, 1, 0, "tensor", 0), logits)
    (logits @ w).sum().backward()
    grad = captured["e"].grad  # (batch, steps, width): dL/de_t at the token embedding
    expected = grad.pow(2).sum(-1).mean(0).sqrt().tolist()
    assert report.input_grad_norm == pytest.approx(expected, rel=1e-5)
    assert report.sequence.grad_norm_by_lag == pytest.approx(expected[::-1], rel=1e-5)


def test_a_state_space_model_says_its_scan_is_not_stepped(folders):
    report = analysed(folders["mamba"], steps=20)
    assert any("MambaMixer's forward as a loop or scan" in note for note in report.model.notes)
    assert report.recurrent == []


def test_an_image_model_is_probed_with_pixel_values_from_its_config(tmp_path):
    torch.manual_seed(0)
    tiny_vit().save_pretrained(tmp_path / "vit")
    report = analysed(tmp_path / "vit")
    assert report.settings.input_shape == [2, 3, 16, 16]
    blocks = [layer for layer in report.layers if layer.type.startswith("ViTLayer")]
    assert len(blocks) == 2 and all(block.residual for block in blocks)


def test_the_config_dtype_is_the_default_and_an_explicit_dtype_wins(tmp_path):
    torch.manual_seed(0)
    tiny_gpt2().to(torch.bfloat16).save_pretrained(tmp_path / "half")
    config = json.loads((tmp_path / "half" / "config.json").read_text())
    assert "bfloat16" in (config.get("dtype"), config.get("torch_dtype"))
    report = analysed(tmp_path / "half")
    assert report.settings.dtype == "bfloat16" and report.numerics.dtype == "bfloat16"
    assert analysed(tmp_path / "half", dtype="float64").settings.dtype == "float64"


def test_bin_weights_are_read_weights_only(folders, tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    shutil.copy(folders["gpt2"] / "config.json", folder)
    model = transformers.GPT2LMHeadModel.from_pretrained(folders["gpt2"])
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    report = analysed(folder)
    assert any(".bin files, read weights-only" in note for note in report.model.notes)
    expected = analysed(folders["gpt2"])
    assert [layer.grad_norm for layer in report.layers] == pytest.approx(
        [layer.grad_norm for layer in expected.layers]
    )


class Payload:
    """A class a pickle would have to import: code, not weights."""


def test_a_bin_file_that_holds_code_is_refused(folders, tmp_path, capsys):
    folder = tmp_path / "code"
    folder.mkdir()
    shutil.copy(folders["gpt2"] / "config.json", folder)
    torch.save({"weight": torch.zeros(2), "extra": Payload()}, folder / "pytorch_model.bin")
    assert main(["analyze", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--trust" in err


def test_remote_code_is_refused_without_trust(tmp_path, capsys):
    folder = tmp_path / "remote"
    folder.mkdir()
    config = {
        "model_type": "my-model",
        "architectures": ["MyModel"],
        "auto_map": {"AutoConfig": "modeling_my.MyConfig", "AutoModel": "modeling_my.MyModel"},
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_my.py").write_text("raise SystemExit('this code must not run')\n")
    assert main(["analyze", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "trust_remote_code" in err and "--trust" in err and "modeling_my" in err


def test_without_transformers_one_line_says_which_extra(folders, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers fails
    assert main(["analyze", str(folders["gpt2"])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "gradscope[hf]"' in err


def test_a_folder_without_weights_says_what_it_holds(folders, tmp_path, capsys):
    folder = tmp_path / "empty"
    folder.mkdir()
    shutil.copy(folders["gpt2"] / "config.json", folder)
    assert main(["analyze", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no weights" in err and "config.json" in err


SMALL = dict(hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def saved(tmp_path, name, model):
    torch.manual_seed(0)
    model.save_pretrained(tmp_path / name)
    return tmp_path / name


def test_a_rotary_model_keeps_its_position_tables_out_of_the_stack(tmp_path):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, num_key_value_heads=2, **SMALL)
    report = analysed(saved(tmp_path, "llama", transformers.LlamaForCausalLM(config)))
    names = [layer.name for layer in report.layers]
    assert "model.rotary_emb" not in names  # cos and sin carry no gradient
    assert [n for n in names if n.startswith("model.layers.")] == [
        "model.layers.0",
        "model.layers.1",
    ]
    assert all(layer.residual for layer in report.layers if layer.name.startswith("model.layers"))


def test_an_encoder_decoder_gets_decoder_ids_and_positions_it_embeds(tmp_path):
    torch.manual_seed(0)
    config = transformers.BartConfig(
        vocab_size=VOCAB,
        d_model=WIDTH,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=POSITIONS,
    )
    report = analysed(saved(tmp_path, "bart", transformers.BartForConditionalGeneration(config)))
    assert report.settings.inputs == {
        "input_ids": [2, POSITIONS],
        "decoder_input_ids": [2, POSITIONS],
    }
    described = "from the model's config: input_ids (2×24, token ids), decoder_input_ids"
    assert any(described in note for note in report.model.notes)
    names = [layer.name for layer in report.layers]
    assert names[0] != "model.encoder.embed_positions"  # positions are added, not the stream
    assert "model.encoder.layers.0" in names and "model.decoder.layers.1" in names
    t5 = transformers.T5Config(
        vocab_size=VOCAB,
        d_model=WIDTH,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        decoder_start_token_id=0,
    )
    report = analysed(saved(tmp_path, "t5", transformers.T5ForConditionalGeneration(t5)), steps=20)
    assert report.settings.inputs["decoder_input_ids"] == [2, 20]
    blocks = [layer.name for layer in report.layers if layer.residual]
    assert {"encoder.block.0", "decoder.block.1"} <= set(blocks)


def test_positions_no_hook_sees_are_found_by_the_longest_length_the_model_runs(tmp_path):
    torch.manual_seed(0)
    config = transformers.RobertaConfig(
        vocab_size=VOCAB, max_position_embeddings=POSITIONS, num_labels=3, **SMALL
    )
    model = transformers.RobertaForSequenceClassification(config)
    report = analysed(saved(tmp_path, "roberta", model))
    # RoBERTa's positions start after its padding index: two fewer than the table holds
    assert report.settings.input_shape == [2, POSITIONS - 2]
    assert any(
        f"the probe runs {POSITIONS - 2} steps, the longest" in n for n in report.model.notes
    )


def test_a_model_with_code_of_its_own_runs_with_trust(tmp_path, capsys):
    from tests.helpers import hf_remote_model

    hf_remote_model.TinyConfig.register_for_auto_class()
    hf_remote_model.TinyModel.register_for_auto_class("AutoModel")
    torch.manual_seed(0)
    hf_remote_model.TinyModel(hf_remote_model.TinyConfig()).save_pretrained(tmp_path / "own")
    assert "auto_map" in json.loads((tmp_path / "own" / "config.json").read_text())
    assert main(["analyze", str(tmp_path / "own")]) == 2  # code: refused
    assert "--trust" in capsys.readouterr().err
    report = gradscope.analyze(str(tmp_path / "own"), trust=True, what_if=False)
    assert report.model.class_name == "TinyModel" and len(report.layers) >= 4


def test_a_custom_autograd_function_without_transform_support_is_measured_by_autograd(tmp_path):
    torch.manual_seed(0)
    config = transformers.BloomConfig(vocab_size=VOCAB, hidden_size=WIDTH, n_layer=3, n_head=4)
    report = analysed(saved(tmp_path, "bloom", transformers.BloomForCausalLM(config)), steps=16)
    blocks = [layer for layer in report.layers if layer.name.startswith("transformer.h.")]
    assert len(blocks) == 3 and all(block.residual for block in blocks)
    assert all(block.chi > 0 for block in blocks)  # the VJPs ran by plain autograd


def test_a_layer_shared_over_depth_is_one_block_per_call(tmp_path):
    torch.manual_seed(0)
    config = transformers.AlbertConfig(
        vocab_size=VOCAB, embedding_size=16, max_position_embeddings=POSITIONS, **SMALL
    )
    config.num_hidden_layers = 3
    report = analysed(saved(tmp_path, "albert", transformers.AlbertModel(config)))
    shared = "encoder.albert_layer_groups.0.albert_layers.0"
    calls = [layer for layer in report.layers if layer.name == shared]
    assert len(calls) == 3 and all(layer.residual for layer in calls)


def test_inputs_the_config_describes_serve_where_the_modules_do_not_say(tmp_path):
    torch.manual_seed(0)
    xlnet = transformers.XLNetConfig(
        vocab_size=VOCAB, d_model=WIDTH, n_layer=3, n_head=4, d_inner=64
    )
    report = analysed(saved(tmp_path, "xlnet", transformers.XLNetLMHeadModel(xlnet)), steps=16)
    assert report.settings.inputs == {"input_ids": [2, 16]}  # its own parameter hides the ids
    assert any("the probe, from the model's config: input_ids" in n for n in report.model.notes)
    whisper = transformers.WhisperConfig(
        vocab_size=VOCAB,
        num_mel_bins=16,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        d_model=WIDTH,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=50,
        max_target_positions=POSITIONS,
        decoder_start_token_id=1,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = transformers.WhisperForConditionalGeneration(whisper)
    report = analysed(saved(tmp_path, "whisper", model))
    assert report.settings.inputs == {
        "input_features": [2, 16, 100],
        "decoder_input_ids": [2, POSITIONS],
    }
    assert any(layer.name.startswith("model.encoder.layers.") for layer in report.layers)


def test_weights_a_folder_lacks_are_said_to_be_a_fresh_init(folders, tmp_path):
    folder = as_classifier(folders["gpt2"], tmp_path / "classifier")
    report = analysed(folder)
    assert report.model.class_name == "GPT2ForSequenceClassification"
    assert any(
        "weights not in the folder, initialised at random by transformers (1: score.weight)" in note
        for note in report.model.notes
    )


def test_a_forecaster_is_probed_with_its_history_and_gets_a_time_view(tmp_path):
    config = transformers.PatchTSTConfig(
        num_input_channels=3,
        context_length=32,
        patch_length=4,
        patch_stride=4,
        prediction_length=8,
        d_model=16,
        num_attention_heads=2,
        num_hidden_layers=3,
        ffn_dim=32,
    )
    torch.manual_seed(0)
    transformers.PatchTSTForPrediction(config).save_pretrained(tmp_path / "patchtst")
    report = analysed(tmp_path / "patchtst")
    assert report.settings.input_shape == [2, 32, 3]  # past_values: context by channels
    assert len(report.sequence.grad_norm_by_lag) == 32
    # the sequence view against autograd: the forecast (no 32-step axis) is read whole
    history = torch.randn(2, 32, 3, generator=torch.Generator().manual_seed(4))
    report = gradscope.analyze(str(tmp_path / "patchtst"), history, what_if=False)
    model = transformers.PatchTSTForPrediction.from_pretrained(tmp_path / "patchtst").eval()
    x = history.clone().requires_grad_(True)
    y = model(past_values=x).prediction_outputs.reshape(2, -1)
    w = loss_direction(y.shape[1], Probe(history, 1, 0, "tensor", 0), y)
    (y @ w).sum().backward()
    expected = x.grad.pow(2).sum(-1).mean(0).sqrt().tolist()
    assert report.sequence.grad_norm_by_lag == pytest.approx(expected[::-1], rel=1e-5)


def test_a_hub_id_is_read_from_the_local_cache_and_never_downloaded(
    folders, tmp_path, monkeypatch, capsys
):
    hub = pytest.importorskip("huggingface_hub")
    cache = tmp_path / "hub"
    snapshot = cache / "models--tiny--gpt2" / "snapshots" / ("a" * 40)
    shutil.copytree(folders["gpt2"], snapshot)
    (cache / "models--tiny--gpt2" / "refs").mkdir()
    (cache / "models--tiny--gpt2" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)  # a download would fail
    monkeypatch.chdir(tmp_path)
    report = analysed("tiny/gpt2")
    assert report.model.checkpoint_kind == "hugging-face"
    assert report.model.path == str(snapshot)
    assert any("tiny/gpt2 read from the local Hugging Face cache" in n for n in report.model.notes)
    expected = analysed(folders["gpt2"])
    assert [layer.grad_norm for layer in report.layers] == [
        layer.grad_norm for layer in expected.layers
    ]
    assert main(["analyze", "tiny/absent"]) == 2
    err = capsys.readouterr().err
    assert "nor a model of that name in the local Hugging Face cache" in err
    assert "hf download tiny/absent" in err and "Traceback" not in err
    # a project's config names it the same way (not read as a path below the config)
    (tmp_path / "pyproject.toml").write_text(
        '[[tool.gradscope.models]]\nname = "cached"\npath = "tiny/gpt2"\nwhat_if = false\n'
    )
    code = main(["check", "--format", "json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    (entry,) = json.loads(out.out)["models"]
    assert entry["report"]["model"]["path"] == str(snapshot)
