"""When the input read from the model's first module does not run it (that module sits inside
a cell and reads the state too, say), the input the model does take, found by trial: a batch
of sequences, or of vectors, as wide as one of the sizes its modules and weights state."""

from __future__ import annotations

import torch
from torch import nn

from gradscope.probe.positions import TRIAL_STEPS
from gradscope.probe.trial import trial_run
from gradscope.taxonomy import size_attribute

#: At most this many widths are tried.
MAX_WIDTHS = 12
#: Size attributes that name the width of what a module reads.
WIDTH_ATTRIBUTES = ("in_features", "input_size", "embed_dim", "normalized_shape", "in_channels")


def candidate_widths(model: nn.Module) -> list[int]:
    """Input widths the model's modules suggest, in registration order: what each module
    says it reads (less the state, for a cell's layer that reads both), then the sizes of its
    weight matrices (raw-parameter cells)."""
    stated, weights = [], []
    for module in model.modules():
        stated += [size_attribute(module, name) for name in WIDTH_ATTRIBUTES]
        stated += _concatenated(module)
        for parameter in module.parameters(recurse=False):
            if parameter.dim() == 2:
                weights += list(parameter.shape)
    found = [width for width in dict.fromkeys([*stated, *weights]) if width]
    return found[:MAX_WIDTHS]


def _concatenated(module: nn.Module) -> list[int]:
    """The input width of a cell's Linear that reads ``cat(x, h)`` and gives 1, 3 or 4 gates
    of h (a tanh cell, a GRU, an LSTM): ``in_features - out_features / gates``."""
    inputs, outputs = size_attribute(module, "in_features"), size_attribute(module, "out_features")
    if inputs is None or outputs is None:
        return []
    hidden = [outputs // gates for gates in (1, 3, 4) if outputs % gates == 0]
    return [inputs - h for h in hidden if inputs > h]


#: Steps of a channels-first trial: enough for a few dilated convolutions.
CHANNEL_STEPS = 32


def runnable_shape(
    model: nn.Module, device: torch.device, dtype: torch.dtype
) -> tuple[str, tuple[int, ...]] | None:
    """The kind and shape of the first trial input the model runs on: for each candidate
    width w, a batch of sequences (2, steps, w), of vectors (2, w), then of channels-first
    sequences (2, w, steps) as convolutions read; None when none runs. Sequences come
    first: a model that loops over steps may take a 2-D input as one unbatched sequence,
    while a model of vectors that runs on sequences is only read per step."""
    for width in candidate_widths(model):
        trials = [
            ("sequences", (2, TRIAL_STEPS, width)),
            ("vectors", (2, width)),
            ("channels", (2, width, CHANNEL_STEPS)),
        ]
        for kind, shape in trials:
            x = torch.randn(shape, dtype=dtype, device=device)
            if trial_run(lambda x=x: model(x)):
                return kind, shape
    return None
