"""A Hugging Face model analysed in part (``--only``): the selected blocks' weights held, every
other weight read from the checkpoint as the model runs. The numbers must be those of the
whole model loaded by transformers, and the weights left out must never be held at once."""

from __future__ import annotations

import json

import pytest
import torch

import gradscope
from gradscope.cli import main
from gradscope.loading import load_model
from gradscope.loading.streaming import WeightStream
from gradscope.options import LoadOptions

from tests.helpers.hf_folders import as_classifier

transformers = pytest.importorskip("transformers")

VOCAB, WIDTH, LAYERS = 64, 32, 6
GPT2_MIDDLE = tuple(f"transformer.h.{i}" for i in (1, 2, 3))


def tiny_gpt2():
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=32, n_embd=WIDTH, n_layer=LAYERS, n_head=4
    )
    return transformers.GPT2LMHeadModel(config)  # lm_head tied to the token embedding


def tiny_llama():
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=WIDTH,
        intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(config)  # rotary tables: buffers computed at init


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """GPT-2 in shards, Llama in one file, and GPT-2 in bfloat16."""
    root = tmp_path_factory.mktemp("streamed")
    torch.manual_seed(0)
    tiny_gpt2().save_pretrained(root / "gpt2", max_shard_size="40KB")
    torch.manual_seed(0)
    tiny_llama().save_pretrained(root / "llama")
    torch.manual_seed(0)
    tiny_gpt2().to(torch.bfloat16).save_pretrained(root / "gpt2-bf16")
    return {name: root / name for name in ("gpt2", "llama", "gpt2-bf16")}


def analysed(path, only, stream=True, **options):
    return gradscope.analyze(str(path), only=only, stream=stream, **options)


def numbers(report):
    """What the views measured, without the notes and fixes that say how."""
    data = json.loads(report.to_json())
    for key in ("model", "fixes", "findings"):
        data.pop(key)
    data["numerics"].pop("largest_gradient")  # weights read as it runs get no gradient
    data["numerics"].pop("headroom")  # which is measured against the largest gradient
    return data


def test_only_the_selected_weights_are_read_when_loaded(folders):
    loaded = load_model(str(folders["gpt2"]), LoadOptions(only=GPT2_MIDDLE))
    stream = loaded.stream
    assert isinstance(stream, WeightStream)
    assert stream.reads == 0  # nothing left out has been read yet
    assert stream.kept == list(GPT2_MIDDLE)
    model = loaded.module
    reference = transformers.GPT2LMHeadModel.from_pretrained(folders["gpt2"])
    for name, parameter in model.named_parameters():
        if name.startswith(GPT2_MIDDLE):
            assert parameter in stream.held
            torch.testing.assert_close(parameter, reference.get_parameter(name), rtol=0, atol=0)
        else:
            assert parameter in stream.streamed, name
    # the tied head and the token embedding are one weight, read from its one key
    assert model.lm_head.weight is model.transformer.wte.weight
    assert stream.streamed[model.lm_head.weight] == "transformer.wte.weight"


@pytest.mark.parametrize(
    ("name", "only"),
    [
        ("gpt2", GPT2_MIDDLE),
        ("gpt2", ("transformer.h.*",)),  # the last block runs the final norm, left out
        ("gpt2", ("transformer.h.[123]",)),  # a glob that names blocks, not what is in them
        ("llama", ("model.layers.2*", "model.layers.3", "model.layers.4")),
    ],
)
def test_streamed_numbers_equal_the_whole_models(folders, name, only):
    streamed = analysed(folders[name], only)
    whole = analysed(folders[name], only, stream=False)
    assert any("read from the checkpoint as the model runs" in n for n in streamed.model.notes)
    assert not any("read from the checkpoint" in n for n in whole.model.notes)
    assert streamed.stack is not None and streamed.stack.blocks >= 3
    assert numbers(streamed) == numbers(whole)


def test_left_out_weights_are_let_go_once_used(folders):
    loaded = load_model(str(folders["llama"]), LoadOptions(only=("model.layers.3",)))
    model, stream = loaded.module, loaded.stream
    stream.place(model, torch.device("cpu"), torch.float32)
    reference = transformers.LlamaForCausalLM.from_pretrained(
        folders["llama"], attn_implementation="eager"
    ).eval()
    ids = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(1))

    def input_gradient(net):
        seen = {}
        hook = net.model.embed_tokens.register_forward_hook(
            lambda module, args, out: seen.setdefault("e", out)
        )
        logits = net(input_ids=ids).logits
        hook.remove()
        (gradient,) = torch.autograd.grad(logits[:, -1].pow(2).sum(), seen["e"])
        return logits.detach(), gradient

    for parameter in model.parameters():
        parameter.requires_grad_(True)
    expected_logits, expected = input_gradient(reference)
    logits, gradient = input_gradient(model.eval())
    torch.testing.assert_close(logits, expected_logits)
    torch.testing.assert_close(gradient, expected)
    sizes = [p.numel() * p.element_size() for p in stream.streamed]
    assert stream.live_bytes == 0  # every weight read was let go
    # never more than the largest two left-out weights in memory at once, where holding them
    # all for the backward pass (as autograd would) takes their sum
    assert stream.peak_bytes <= 2 * max(sizes) < sum(sizes)
    # the weights the backward pass needs were read again, not kept
    assert stream.reads > len(stream.streamed)


def test_a_bfloat16_model_is_traced_in_bfloat16_without_a_copy(folders):
    only = GPT2_MIDDLE
    streamed = analysed(folders["gpt2-bf16"], only)
    whole = analysed(folders["gpt2-bf16"], only, stream=False)
    assert streamed.numerics.dtype == "bfloat16"
    assert streamed.numerics.largest_activation == whole.numerics.largest_activation
    assert numbers(streamed) == numbers(whole)


def test_weights_the_checkpoint_lacks_load_the_whole_model(folders, tmp_path):
    folder = as_classifier(folders["gpt2"], tmp_path / "classifier")
    report = analysed(folder, GPT2_MIDDLE)
    notes = report.model.notes
    assert any(
        "the whole model was loaded, not streamed (score.weight has no weight of that name" in n
        for n in notes
    )
    assert any("initialised at random by transformers (1: score.weight)" in n for n in notes)


def test_the_command_line_streams_and_says_fixes_are_not_measured(folders, capsys):
    code = main(
        [
            "analyze",
            str(folders["gpt2"]),
            *(f"--only={block}" for block in GPT2_MIDDLE),
            "--format",
            "json",
            "--horizon",
            "3",
            "--epsilon",
            "0.9",
        ]
    )
    out = capsys.readouterr()
    report = json.loads(out.out)
    assert code == 1 and "Traceback" not in out.err  # vanishing within 3 steps at this epsilon
    assert any("let go once used" in note for note in report["model"]["notes"])
    assert report["fixes"]
    assert all(
        fix["measured"].startswith("not measured: the model's weights outside --only")
        for fix in report["fixes"]
    )
    code = main(
        [
            "analyze",
            str(folders["gpt2"]),
            *(f"--only={block}" for block in GPT2_MIDDLE),
            "--no-stream",
            "--format",
            "json",
        ]
    )
    whole = json.loads(capsys.readouterr().out)
    assert code == 0
    assert not any("let go once used" in note for note in whole["model"]["notes"])


def test_a_pattern_that_selects_no_weights_is_refused_before_the_model_runs(folders, capsys):
    code = main(["analyze", str(folders["llama"]), "--only", "layers.9"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "--only layers.9 selects no module with weights in LlamaForCausalLM" in err
    assert "its blocks are model.layers.0 to model.layers.5" in err


def test_a_project_config_streams_or_not_per_model(folders, tmp_path, capsys):
    config = tmp_path / "pyproject.toml"
    config.write_text(
        "[tool.gradscope]\n"
        'only = ["transformer.h.[123]"]\n'
        "what_if = false\n"
        "[[tool.gradscope.models]]\n"
        f'name = "streamed"\npath = "{folders["gpt2"]}"\n'
        "[[tool.gradscope.models]]\n"
        f'name = "whole"\npath = "{folders["gpt2"]}"\nstream = false\n'
    )
    code = main(["check", "--config", str(config), "--format", "json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    streamed, whole = (entry["report"] for entry in json.loads(out.out)["models"])
    assert any("let go once used" in note for note in streamed["model"]["notes"])
    assert not any("let go once used" in note for note in whole["model"]["notes"])
    assert streamed["layers"] == whole["layers"]
