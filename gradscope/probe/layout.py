"""Where the model's input comes from: its layout (time, batch, features or token ids), found
from the model's first modules by what they read."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from gradscope.errors import GradscopeError
from gradscope.taxonomy import (
    CONVOLUTIONS,
    is_kind,
    is_recurrent,
    is_within,
    recurrent_modules,
    size_attribute,
    type_name,
)


@dataclass(frozen=True)
class Layout:
    """Where time and batch sit in the model's input, and what the input holds.

    ``features`` is the feature size of a float input; token inputs (integer ids for an
    embedding) have ``vocab`` instead, and no feature axis.
    """

    features: int | None
    batch_first: bool
    source: str
    assumed: bool = False
    module: str | None = None
    vocab: int | None = None
    token_module: str | None = None
    time_last: bool = False
    sequence: bool = True

    @property
    def tokens(self) -> bool:
        """True when the model reads integer token ids."""
        return self.vocab is not None

    def shape(self, steps: int, batch: int) -> tuple[int, ...]:
        """The input shape for a probe of ``steps`` steps and ``batch`` sequences."""
        if not self.sequence:
            return (batch, self.features)
        sequence = (batch, steps) if self.batch_first else (steps, batch)
        return sequence if self.tokens else (*sequence, self.features)

    def axes(self, ndim: int, tokens: bool = False) -> tuple[int | None, int | None]:
        """(time axis, batch axis) of an input with ``ndim`` dimensions.

        Feature inputs are (batch, steps, F), (steps, batch, F) or unbatched (steps, F); token
        inputs (integer ids for an embedding) lack the feature axis.
        """
        if not self.sequence:
            return None, 0
        if self.time_last:
            return ndim - 1, 0
        if ndim == 2 - tokens:
            return 0, None
        return (1, 0) if self.batch_first else (0, 1)


def first_parametrised(
    model: nn.Module, inside: tuple[str, ...] = (), positional: tuple[str, ...] = ()
) -> tuple[str, nn.Module] | None:
    """The first module (in registration order) that holds parameters of its own.

    Modules inside the custom cells ``inside`` come last: a cell's first layer may read the
    state as well as the input. ``positional`` embeddings (they read positions, not the
    model's input) are passed over.
    """
    found = [
        (name, module)
        for name, module in model.named_modules()
        if (is_recurrent(module) or next(module.parameters(recurse=False), None) is not None)
        and name not in positional
    ]
    within = [entry for entry in found if is_within(entry[0], inside)]
    ordered = [entry for entry in found if entry not in within] + within
    return ordered[0] if ordered else None


def _entry(name: str, module: nn.Module, needs_shape: bool) -> tuple[int | None, int | None]:
    """(feature size, vocabulary) of the input that ``module`` reads, when it says.

    Kinds are PyTorch's classes (or TorchScript modules scripted from them), never a name
    alone, and sizes are read defensively: any other module is unknown, not an error.
    """
    if is_kind(module, ("Embedding",)):
        return None, size_attribute(module, "num_embeddings")
    if is_kind(module, ("Linear",)):
        return size_attribute(module, "in_features"), None
    if is_kind(module, ("LayerNorm",)):
        return size_attribute(module, "normalized_shape"), None
    if is_kind(module, ("MultiheadAttention",)):
        return size_attribute(module, "embed_dim"), None
    if is_recurrent(module):
        return size_attribute(module, "input_size"), None
    channels = size_attribute(module, "in_channels")
    if is_kind(module, CONVOLUTIONS) and needs_shape and channels is not None:
        examples = {"Conv1d": "B,{c},L", "Conv2d": "B,{c},H,W", "Conv3d": "B,{c},D,H,W"}
        # by kind, not class name: a parametrized (weight-normed) Conv1d is a Conv1d
        base = next(name for name in examples if is_kind(module, (name,)))
        example = examples[base]
        raise GradscopeError(
            f"the model starts with {name or 'its root'} ({type_name(module)}, {channels} input "
            "channels): "
            f"the rest of its input shape is unknown; pass --input-shape "
            f"{example.format(c=channels)}"
        )
    return None, None


def input_layout(
    model: nn.Module,
    batch_first: bool | None = None,
    input_shape: tuple | None = None,
    cells: tuple[str, ...] = (),
    positional: tuple[str, ...] = (),
) -> Layout:
    """The model's input: from its first parametrised module, time layout from its first RNN.

    An ``nn.Embedding`` first means token ids, an ``nn.Linear`` or a recurrent module first
    means features of its input size. The time layout is the first recurrent module's
    ``batch_first``, or the one ``batch_first`` sets; cells (PyTorch's or custom ones named in
    ``cells``) loop in the user's code, so their sequences are assumed batch-first unless told.
    """
    recurrent = recurrent_modules(model)
    if recurrent:
        name, module = recurrent[0]
        inferred, features = getattr(module, "batch_first", None), module.input_size
        source = name or type(module).__name__
    elif cells:
        name, module, inferred, features, source = cells[0], None, None, None, cells[0]
    else:
        return feedforward_layout(model, input_shape, positional, batch_first)
    chosen = inferred if batch_first is None else batch_first
    vocab, token_module, time_last = None, None, False
    first = first_parametrised(model, cells, positional)
    if first is not None and first[1] is not module:
        entry_features, vocab = _entry(*first, needs_shape=input_shape is None)
        features = entry_features or features
        token_module = first[0] if vocab is not None else None
        time_last = is_kind(first[1], CONVOLUTIONS)
    if features is None and vocab is None and input_shape is None:
        raise GradscopeError(
            f"the input size of the model around {source} is unknown; pass --input-shape, e.g. "
            "1,100,F for (batch, steps, features)"
        )
    return Layout(
        features, chosen is not False, source, chosen is None, name, vocab, token_module, time_last
    )


def feedforward_layout(
    model: nn.Module,
    input_shape: tuple | None = None,
    positional: tuple[str, ...] = (),
    batch_first: bool | None = None,
) -> Layout:
    """The input of a model without recurrent modules: a batch of what its first module reads.

    ``nn.Linear`` first: (batch, in_features); ``nn.Embedding``: token ids (batch, steps);
    ``nn.MultiheadAttention`` (a whole transformer encoder): a sequence of ``embed_dim``
    vectors, laid out as its ``batch_first`` says; anything else (a convolution, say) needs
    ``--input-shape``, whose first axis is the batch.
    A three-axis ``--input-shape`` is a sequence: (batch, channels, length) for a ``Conv1d``,
    else (batch, steps, features) (``--time-major``: steps first) unless the first module
    reads a last axis of another size.
    """
    first = first_parametrised(model, positional=positional)
    if first is None:
        raise GradscopeError(
            "the model has no module with parameters; gradscope analyses trained or initialised "
            "networks: check the checkpoint"
        )
    features, vocab = _entry(*first, needs_shape=input_shape is None)
    name = first[0] or type(first[1]).__name__
    if features is None and vocab is None and input_shape is None:
        raise GradscopeError(
            f"the model starts with {name} ({type_name(first[1])}), whose input shape gradscope "
            "cannot infer; pass --input-shape with the batch first, then what it reads (e.g. "
            "16,F for F features)"
        )
    tokens = vocab is not None
    over_length = is_kind(first[1], ("Conv1d",))
    attention = is_kind(first[1], ("MultiheadAttention",))
    sequence = tokens or (
        input_shape is not None
        and len(input_shape) == 3
        and (features is None or over_length or input_shape[-1] == features)
    )
    if attention and input_shape is None:  # attention reads a sequence of embed_dim vectors
        sequence = True
        if batch_first is None:
            batch_first = bool(getattr(first[1], "batch_first", False))
    return Layout(
        features,
        batch_first is not False,
        name,
        vocab=vocab,
        token_module=first[0] if tokens else None,
        time_last=bool(sequence and over_length),
        sequence=bool(sequence),
    )
