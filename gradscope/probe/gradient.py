"""Where the gradient at the model's input is taken: the probe itself, or, for token ids
(which have no gradient), the output of the embedding that reads them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import Tensor, nn

from gradscope.numerics import pooled_norms
from gradscope.probe.inputs import Probe


@contextmanager
def input_leaf(model: nn.Module, probe: Probe) -> Iterator[Callable[[], Tensor | None]]:
    """While inside, runs of ``model`` on ``probe`` keep the tensor the input gradient is taken
    at; the callable yielded hands it back after a run (None when there is none: a token
    embedding that did not read the whole probe)."""
    embedded: list[Tensor] = []
    hook = None
    if probe.token_module is not None:
        embedding = model.get_submodule(probe.token_module)
        hook = embedding.register_forward_hook(lambda module, args, out: embedded.append(out))

    def leaf() -> Tensor | None:
        if probe.inputs.requires_grad:
            return probe.inputs
        if not embedded or embedded[0].shape[: probe.inputs.dim()] != probe.inputs.shape:
            return None  # not the embedding of the whole probe
        return embedded[0]

    try:
        yield leaf
    finally:
        if hook is not None:
            hook.remove()


def per_step_input_norms(gradient: Tensor, probe: Probe) -> list[float]:
    """``sqrt(mean_b ||dL/dx_t||^2)`` for each time step of the probe, in time order."""
    per_step = gradient.movedim(probe.time_axis, 0).reshape(probe.steps, probe.batch, -1)
    return pooled_norms(per_step, per_step.shape[1])
