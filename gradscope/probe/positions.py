"""Which embedding reads the model's input, by data flow: a positional embedding (called on
``torch.arange(steps)``) is not the token input, and its size bounds the probe's length.

A short trial run records what every ``nn.Embedding`` reads; one that reads positions is
positional. The layout is then taken again without it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from contextlib import ExitStack

import torch
from torch import Tensor, nn

from gradscope.errors import GradscopeError
from gradscope.options import AnalysisOptions
from gradscope.probe.layout import Layout, input_layout
from gradscope.probe.trial import trial_run
from gradscope.taxonomy import is_kind, size_attribute

#: The trial run's length: long enough that random ids are never taken for positions.
TRIAL_STEPS = 5
#: At most this many positional embeddings are set aside one after another.
MAX_TRIALS = 4


def reads_positions(ids: Tensor) -> bool:
    """Whether ``ids`` are positions ``0, 1, ..., T-1`` along the last axis (T > 1), possibly
    repeated over a batch or offset by a constant (a cache's past length)."""
    if ids.is_floating_point() or ids.dim() == 0 or ids.shape[-1] < 2:
        return False
    rows = ids.reshape(-1, ids.shape[-1])
    steps = torch.arange(ids.shape[-1], device=ids.device)
    return bool(((rows - rows[:, :1]) == steps).all())


def embedding_reads(model: nn.Module, inputs: Tensor) -> tuple[dict[str, Tensor], bool]:
    """What each ``nn.Embedding`` of ``model`` read first on ``inputs`` (until it failed, if
    it did), and whether the model ran through."""
    read: dict[str, Tensor] = {}
    with ExitStack() as hooks:
        for name, module in model.named_modules():
            if is_kind(module, ("Embedding",)):

                def record(module: nn.Module, args: tuple, name: str = name) -> None:
                    if args and isinstance(args[0], Tensor):
                        read.setdefault(name, args[0].detach())

                hooks.callback(module.register_forward_pre_hook(record).remove)
        ran = trial_run(lambda: model(inputs))
    return read, ran


@dataclasses.dataclass
class Positions:
    """The positional embeddings found (path -> number of positions)."""

    sizes: dict[str, int | None] = dataclasses.field(default_factory=dict)

    @property
    def limit(self) -> tuple[str, int] | None:
        """The embedding with the fewest positions, and how many: the longest probe it serves."""
        known = [(name, size) for name, size in self.sizes.items() if size]
        return min(known, key=lambda item: item[1]) if known else None


def layout_by_data_flow(
    model: nn.Module,
    layout: Layout,
    options: AnalysisOptions,
    trial: Callable[[Layout], Tensor],
    shape: tuple[int, ...] | None = None,
) -> tuple[Layout, Positions]:
    """``layout`` checked on a short trial run (``trial`` builds its input).

    While the layout's token embedding reads positions, or the model cannot run on token ids
    at all, the layout is taken again without that embedding, and kept if the model runs on
    it. Every embedding seen reading positions is returned. ``shape`` is the input's shape
    where the user said it (``--input-shape`` or their probe).
    """
    positions = Positions()
    set_aside: tuple[str, ...] = ()
    for _ in range(MAX_TRIALS):
        read, ran = _trial_run(model, layout, trial)
        for name, ids in read.items():
            if reads_positions(ids):
                positions.sizes[name] = size_attribute(model.get_submodule(name), "num_embeddings")
        if not layout.tokens or (ran and layout.token_module not in positions.sizes):
            return layout, positions
        set_aside += (layout.token_module,)
        try:
            other = input_layout(model, options.batch_first, shape, options.cells, set_aside)
        except GradscopeError:
            return layout, positions
        if not ran and not _trial_run(model, other, trial)[1]:
            return layout, positions  # neither runs: the probe run will say why
        layout = other
    return layout, positions


def _trial_run(
    model: nn.Module, layout: Layout, trial: Callable[[Layout], Tensor]
) -> tuple[dict[str, Tensor], bool]:
    try:
        inputs = trial(layout)
    except GradscopeError:
        return {}, False
    return embedding_reads(model, inputs)
