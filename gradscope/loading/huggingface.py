"""Hugging Face model folders (``save_pretrained``): ``config.json`` beside the weights.

The model is built from its config with transformers (the ``hf`` extra, imported only here):
the class ``architectures`` names, else the auto class for the config. Safetensors weights
(one file, or shards with an index) are read by transformers' own loader, which runs no code;
``.bin`` weights are pickles, read by gradscope's weights-only reader like every other pickle
and handed over as a state dict. A config whose ``auto_map`` points at code of its own
(``trust_remote_code``) is refused without ``--trust``.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from torch import nn

from gradscope.errors import GradscopeError, first_line

if TYPE_CHECKING:
    from gradscope.loading.streaming import WeightStream

CONFIG_NAME = "config.json"
MISSING = (
    'a Hugging Face model folder needs transformers: pip install "gradscope[hf]" (or pip '
    "install transformers)"
)
SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")
PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
#: The name of one shard of a sharded checkpoint.
SHARD = r"(model|pytorch_model)-\d+-of-\d+\.(safetensors|bin)"
#: Config keys that name a dtype (older transformers wrote ``torch_dtype``).
DTYPE_KEYS = ("torch_dtype", "dtype")


def pretrained_folder(path: Path) -> Path | None:
    """The Hugging Face model folder ``path`` is or names (a folder holding ``config.json``
    with a ``model_type`` or ``architectures``, or that ``config.json`` itself); else None."""
    if path.is_dir():
        folder = path
    elif path.is_file() and (path.name == CONFIG_NAME or _weights_file(path.name)):
        folder = path.parent  # its config, its index, or one of its weight files
    else:
        return None
    config = folder / CONFIG_NAME
    if not config.is_file():
        return None
    data = _read_config(config, strict=path.name == CONFIG_NAME)
    if not isinstance(data, dict) or not ({"model_type", "architectures"} & set(data)):
        return None
    return folder


def cached_folder(source: str) -> Path:
    """The folder of the Hub model ``source`` (``org/model`` or ``org/model@revision``) in the
    local Hugging Face cache; nothing is downloaded. A one-line error when it is not there."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise GradscopeError(f"{source}: no such file. {MISSING}") from None
    repo, _, revision = source.partition("@")
    try:
        folder = snapshot_download(repo, revision=revision or None, local_files_only=True)
    except Exception:
        raise GradscopeError(
            f"{source}: no such file, nor a model of that name in the local Hugging Face cache; "
            f"gradscope reads local files only: download it first (hf download {repo}) or "
            "give the folder save_pretrained wrote"
        ) from None
    return Path(folder)


def _weights_file(name: str) -> bool:
    """Whether ``name`` is one of the weight files ``save_pretrained`` writes."""
    return name in SAFETENSORS + PICKLES or bool(re.fullmatch(SHARD, name))


def _read_config(config: Path, strict: bool) -> Any:
    try:
        return json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        if strict:
            raise GradscopeError(f"{config} is not readable JSON ({first_line(error)})") from None
        return None


def _config_dtype(data: dict) -> str | None:
    """The dtype a config says its weights are in (``float32``, ``bfloat16``...)."""
    value = next((data[key] for key in DTYPE_KEYS if isinstance(data.get(key), str)), None)
    return value if value in ("float16", "bfloat16", "float32", "float64") else None


def _transformers() -> ModuleType:
    try:
        import transformers
    except ImportError:
        raise GradscopeError(MISSING) from None
    return transformers


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' progress bars and warnings kept out of gradscope's output (the verbosity
    as it was afterwards); nothing when transformers was never imported."""
    module = sys.modules.get("transformers")
    if module is None:
        yield
        return
    logging = module.utils.logging
    level = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def _weights(folder: Path) -> str:
    """Which weights the folder holds: ``safetensors`` or ``pickle``."""
    if any((folder / name).is_file() for name in SAFETENSORS):
        return "safetensors"
    if any((folder / name).is_file() for name in PICKLES):
        return "pickle"
    names = ", ".join(sorted(p.name for p in folder.iterdir())[:6])
    raise GradscopeError(
        f"{folder} has a config.json but no weights gradscope reads ({', '.join(SAFETENSORS)}"
        f" or {', '.join(PICKLES)}; it holds {names})"
    )


def _pickled_state_dict(folder: Path, trust: bool, allow_globals: tuple[str, ...]) -> dict:
    """The ``.bin`` weights (one file, or the shards its index names), read weights-only."""
    from gradscope.loading.files import read_pickle

    index = folder / PICKLES[1]
    if index.is_file():
        try:
            mapping = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, KeyError, TypeError, json.JSONDecodeError) as error:
            raise GradscopeError(f"{index} is not a readable index ({first_line(error)})") from None
        paths = [folder / name for name in dict.fromkeys(mapping.values())]
    else:
        paths = [folder / PICKLES[0]]
    state: dict = {}
    for path in paths:
        loaded = read_pickle(path, trust, allow_globals)
        if not isinstance(loaded, dict):
            raise GradscopeError(f"{path} holds a {type(loaded).__name__}, not a state dict")
        state.update(loaded)
    return state


def _model_class(transformers: ModuleType, config: Any, data: dict, trust: bool) -> Any:
    """The class ``architectures`` names, where transformers has it; else the auto class
    (the folder's own code, through ``auto_map``, only with ``--trust``)."""
    for name in data.get("architectures") or []:
        found = getattr(transformers, str(name), None)
        if isinstance(found, type) and issubclass(found, nn.Module):
            return found
    auto_map = data.get("auto_map") or {}
    if trust and auto_map:
        for auto in ("AutoModelForCausalLM", "AutoModelForSeq2SeqLM", "AutoModel"):
            if auto in auto_map:
                return getattr(transformers, auto)
    return transformers.AutoModel


#: Model types whose recurrence runs inside a layer's forward, as a loop or a scan over the
#: steps (transformers' PyTorch path), not as a module gradscope steps.
SCANNED = {
    "mamba": "MambaMixer",
    "mamba2": "Mamba2Mixer",
    "falcon_mamba": "FalconMambaMixer",
    "rwkv": "RwkvSelfAttention",
    "recurrent_gemma": "RecurrentGemmaRglru",
    "jamba": "JambaMambaMixer",
    "zamba": "ZambaMambaMixer",
    "bamba": "BambaMixer",
    "xlstm": "xLSTMLayer",
}
#: Weights a note names before it says "and N more".
LISTED_KEYS = 4
#: Images without a size in their config are probed at this side.
IMAGE_SIDE = 224
#: The batch of an image or audio probe built from the config.
IMAGE_BATCH = 2
#: The frames a speech encoder's probe gives its transformer.
AUDIO_FRAMES = 50


@dataclass
class Pretrained:
    """A model built from a folder: the module, notes on how, and the input shape its config
    gives (an image model's ``pixel_values``), if any."""

    module: nn.Module
    notes: list[str]
    input_shape: tuple[int, ...] | None = None
    #: The inputs its config describes, by name: an int is a vocabulary size (token ids, one
    #: per step), a tuple the shape of a float input without its batch (Whisper's
    #: ``input_features``). An encoder-decoder needs them all (the decoder's ids too); for a
    #: model with one ``input_ids``, ``fallback``: they are used only where its modules do
    #: not say what it reads.
    inputs: dict[str, int | tuple[int, ...]] | None = None
    fallback: bool = False
    #: The most positions the config says the model embeds, if it says.
    max_steps: int | None = None
    #: The dtype the config says the weights are in, if it says.
    dtype: str | None = None
    #: The weights ``--only`` leaves out, read from the checkpoint as the model runs.
    stream: WeightStream | None = None
    #: Whether ``input_shape`` is (batch, steps, features): a forecaster's history.
    sequence_input: bool = False


def _scan_note(data: dict) -> str | None:
    mixer = SCANNED.get(str(data.get("model_type")))
    if mixer is None:
        return None
    return (
        f"its recurrence runs inside {mixer}'s forward as a loop or scan over the steps "
        "(transformers' PyTorch path; fused CUDA kernels are not used here), which gradscope "
        "cannot step as a cell: it is measured by the sequence view (the gradient by lag) "
        "and the depth view, without exponents or a memory horizon"
    )


def _input_shape(module: nn.Module, config: Any) -> tuple[int, ...] | None:
    """``pixel_values`` shaped from the config for an image model, ``input_values`` long
    enough for AUDIO_FRAMES frames of a speech encoder's convolutions, a forecaster's
    ``past_values`` (its context by its channels); None otherwise (token ids are read from
    the embedding)."""
    main = getattr(module, "main_input_name", None)
    steps, channels = (
        getattr(config, key, None) for key in ("context_length", "num_input_channels")
    )
    if main == "past_values" and isinstance(steps, int) and isinstance(channels, int):
        return (IMAGE_BATCH, steps, channels)  # a forecaster's history: steps by channels
    if main == "input_values":
        stride = math.prod(getattr(config, "conv_stride", None) or [1])
        kernel = sum(getattr(config, "conv_kernel", None) or [1])
        return (IMAGE_BATCH, stride * AUDIO_FRAMES + kernel)
    if main != "pixel_values":
        return None
    channels = int(getattr(config, "num_channels", 3) or 3)
    side = getattr(config, "image_size", None) or IMAGE_SIDE
    height, width = (side, side) if isinstance(side, int) else tuple(side)[:2]
    return (IMAGE_BATCH, channels, int(height), int(width))


def load_pretrained(
    folder: Path,
    trust: bool,
    allow_globals: tuple[str, ...] = (),
    only: tuple[str, ...] = (),
    stream: bool = True,
) -> Pretrained:
    """The model the folder holds, in eval mode with its cache off, and notes on how. With
    ``only`` (``--only`` patterns) and ``stream``, a safetensors folder's model is built
    without weights, the selected modules' read, the others' read as it runs
    (:mod:`gradscope.loading.streaming`)."""
    data = _read_config(folder / CONFIG_NAME, strict=True)
    remote = data.get("auto_map")
    if remote and not trust:
        first = next(iter(remote.values())) if isinstance(remote, dict) else remote
        raise GradscopeError(
            f"{folder}: its config.json maps the model to code of its own ({first}), which "
            "transformers would import and run (trust_remote_code); pass --trust for a folder "
            "you trust"
        )
    transformers = _transformers()
    kind = _weights(folder)
    notes = []
    with quiet_transformers():
        try:
            config = transformers.AutoConfig.from_pretrained(
                str(folder), trust_remote_code=trust, local_files_only=True
            )
        except Exception as error:
            raise GradscopeError(
                f"{folder / CONFIG_NAME}: transformers cannot read this config "
                f"({type(error).__name__}: {first_line(error)}); a newer transformers may know "
                f"its model_type {data.get('model_type')!r}"
            ) from None
        if hasattr(config, "use_cache"):
            config.use_cache = False  # no key-value cache: one plain pass over the probe
        cls = _model_class(transformers, config, data, trust)
        # eager attention: plain products and softmax, which every autograd mode (and the
        # depth view's forward-mode JVPs) differentiates, where fused kernels may not
        keywords: dict[str, Any] = {"config": config, "attn_implementation": "eager"}
        if _is_auto(cls):
            keywords["trust_remote_code"] = trust
        streamed, info = None, {}
        try:
            if only and stream and kind == "pickle":
                notes.append(_whole_note(".bin weights are pickles, read whole"))
            elif only and stream:
                streamed = _streamed(cls, keywords, folder, only)
                if streamed.stream is None:
                    notes.append(_whole_note(streamed.why_not))
                    streamed = None
            if streamed is not None:
                model = streamed.module
                notes.append(_streamed_note(streamed.stream))
            elif kind == "pickle":
                state = _pickled_state_dict(folder, trust, allow_globals)
                model, info = cls.from_pretrained(
                    None, state_dict=state, output_loading_info=True, **keywords
                )
                notes.append(f"weights from {folder.name}'s .bin files, read weights-only")
            else:
                model, info = cls.from_pretrained(
                    str(folder),
                    local_files_only=True,
                    use_safetensors=True,
                    output_loading_info=True,
                    **keywords,
                )
        except GradscopeError:
            raise
        except Exception as error:
            raise GradscopeError(
                f"{folder}: transformers could not build {cls.__name__} from it "
                f"({type(error).__name__}: {first_line(error)})"
            ) from None
    name = type(model).__name__
    notes.insert(0, f"{name} built by transformers {transformers.__version__} from {CONFIG_NAME}")
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        notes.append(
            f"weights not in the folder, initialised at random by transformers "
            f"({len(missing)}: {_listed(missing)}): gradients through them are those of a "
            "fresh init"
        )
    scanned = _scan_note(data)
    if scanned:
        notes.append(scanned)
    inputs, fallback = _config_inputs(model, config)
    return Pretrained(
        model.eval(),
        notes,
        _input_shape(model, config),
        inputs,
        fallback,
        _max_positions(config),
        _config_dtype(data),
        streamed.stream if streamed is not None else None,
        getattr(model, "main_input_name", None) == "past_values",
    )


def _is_auto(cls: type) -> bool:
    """Whether ``cls`` is one of transformers' auto classes (AutoModel...)."""
    return cls.__module__.startswith("transformers.models.auto")


def _streamed(cls: Any, keywords: dict[str, Any], folder: Path, only: tuple[str, ...]) -> Any:
    """The model built without weights, those of the modules ``only`` selects read and the
    others streamed, or why it is loaded whole (a
    :class:`~gradscope.loading.streaming.Streamed`)."""
    from gradscope.loading.streaming import ShardReader, empty_parameters, stream_model
    from gradscope.options import selects_module

    tensors = _safetensors(folder)
    reader = ShardReader(tensors)
    with empty_parameters():
        if _is_auto(cls):
            model = cls.from_config(**keywords)
        else:
            model = cls._from_config(keywords["config"], attn_implementation="eager")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return stream_model(
        model,
        tensors.shapes(),
        reader,
        lambda path: selects_module(only, path),
        getattr(model, "base_model_prefix", ""),
        f"--only {' '.join(only)}",
    )


def _safetensors(folder: Path) -> Any:
    """The folder's safetensors tensors, lazily: from the index's shards, or the one file."""
    from safetensors import safe_open

    from gradscope.loading.shards import ShardedSafetensors, read_index

    index = folder / SAFETENSORS[1]
    if index.is_file():
        return read_index(index)
    single = folder / SAFETENSORS[0]
    with safe_open(str(single), framework="pt", device="cpu") as file:
        keys = list(file.keys())
    return ShardedSafetensors(single, dict.fromkeys(keys, single))


def _listed(names: list[str]) -> str:
    """The first LISTED_KEYS names, and how many more."""
    more = len(names) - LISTED_KEYS
    return ", ".join(names[:LISTED_KEYS]) + (f" and {more} more" if more > 0 else "")


def _whole_note(why: str | None) -> str:
    return f"--only: the whole model was loaded, not streamed ({why})"


def _streamed_note(stream: WeightStream) -> str:
    return (
        f"--only: the weights of {_listed(stream.kept) or 'no module'} are held in memory; "
        f"the other {stream.streamed_parameters:,} parameters are read from the checkpoint "
        "as the model runs (memory-mapped) and let go once used, the backward pass reading "
        "them again"
    )


def _config_inputs(
    module: nn.Module, config: Any
) -> tuple[dict[str, int | tuple[int, ...]] | None, bool]:
    """The inputs the config describes (see :attr:`Pretrained.inputs`), and whether they are
    a fallback. An encoder-decoder reads the decoder's own ids beside the encoder's input (a
    model such as T5 cannot make them without labels)."""
    vocab = getattr(config, "vocab_size", None)
    if not isinstance(vocab, int):
        return None, False
    main = getattr(module, "main_input_name", "input_ids")
    if getattr(config, "is_encoder_decoder", False):
        if main == "input_ids":
            return {"input_ids": vocab, "decoder_input_ids": vocab}, False
        mels, source = (
            getattr(config, "num_mel_bins", None),
            getattr(config, "max_source_positions", None),
        )
        if main == "input_features" and isinstance(mels, int) and isinstance(source, int):
            # the encoder's convolutions halve the frames to its positions
            return {"input_features": (mels, 2 * source), "decoder_input_ids": vocab}, False
        return None, False
    return ({"input_ids": vocab}, True) if main == "input_ids" else (None, False)


def _max_positions(config: Any) -> int | None:
    keys = ("max_position_embeddings", "n_positions", "max_seq_len", "max_target_positions")
    for key in keys:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
