"""Models gradscope cannot step from inside: weights without a class, and saved programs.

Each recurrent part rebuilt from the weights (:mod:`gradscope.loading.inference`) runs on its
own, on a probe of its own input size; layer k of a stacked module is fed by layer k-1, as in
the model. A saved program still runs as a whole for the model's input gradient.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import Tensor, nn

from gradscope.errors import GradscopeError, first_line
from gradscope.loading.inference import InferredPart
from gradscope.probe import Probe, load_probe_file, make_probe, projection_loss
from gradscope.recurrent.measure import measure_recurrent, pooled_norms
from gradscope.report import RecurrentCore
from gradscope.settings import BUILTIN_PROBES, Settings


class PartRunner(nn.Module):
    """One rebuilt part at its path in the model, run over a whole sequence.

    A cell is looped over the time axis (axis 1 batch-first, else 0); a module runs as is.
    """

    def __init__(self, part: InferredPart, batch_first: bool) -> None:
        super().__init__()
        path = part.name.split(".") if part.name else ["cell"]
        holder: nn.Module = self
        for name in path[:-1]:
            child = nn.Module()
            holder.add_module(name, child)
            holder = child
        holder.add_module(path[-1], part.module)
        self.part = [part.module]  # a plain list: not registered twice
        self.is_cell = part.is_cell
        self.batch_first = batch_first

    def forward(self, x: Tensor) -> Tensor:
        """All outputs of the part for a sequence ``x``."""
        module = self.part[0]
        if not self.is_cell:
            return module(x)[0]
        axis = 1 if self.batch_first and x.dim() == 3 else 0
        state, outputs = None, []
        for x_t in x.unbind(axis):
            state = module(x_t, state)
            outputs.append(state[0] if isinstance(state, tuple) else state)
        return torch.stack(outputs, axis)


def _part_settings(settings: Settings, part: InferredPart, steps: int, batch: int) -> Settings:
    """The settings for one part: the whole probe's length; a probe file only where it fits."""
    size = part.module.input_size
    probe, shape = settings.probe, settings.input_shape
    if probe not in BUILTIN_PROBES:
        tensor = load_probe_file(Path(probe))
        if not (tensor.is_floating_point() and tensor.shape[-1] == size):
            probe = "gaussian"
    if shape is not None and shape[-1] != size:
        shape = None
    return dataclasses.replace(settings, probe=probe, input_shape=shape, steps=steps, batch=batch)


def measure_parts(
    parts: list[InferredPart], settings: Settings, device: torch.device, steps: int, batch: int
) -> list[RecurrentCore]:
    """Measure every rebuilt part on its own, on probes of ``steps`` x ``batch``."""
    cores = []
    dtype = getattr(torch, settings.dtype)
    for part in parts:
        part_settings = _part_settings(settings, part, steps, batch)
        batch_first = bool(getattr(part.module, "batch_first", settings.batch_first is not False))
        runner = (
            part.module if not part.name and not part.is_cell else PartRunner(part, batch_first)
        )
        runner = runner.to(device=device, dtype=dtype).eval()
        runner.requires_grad_(True)
        probe = make_probe(runner, part_settings, device)
        run_settings = part_settings.for_steps(probe.steps, probe.batch)
        with torch.enable_grad():
            cores.extend(measure_recurrent(runner, probe, run_settings).cores)
    return cores


def whole_input_gradient(module: nn.Module, probe: Probe) -> list[float] | None:
    """``||dL/dx_t||`` per step of the whole model, by one forward and one backward pass.

    None for token inputs, which have no gradient.
    """
    if not probe.inputs.requires_grad:
        return None
    try:  # cuDNN's RNN backward refuses eval mode; the program runs in eval mode
        with torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
            loss = projection_loss(module(probe.inputs), probe)
            (grad,) = torch.autograd.grad(loss, [probe.inputs])
    except GradscopeError:
        raise
    except Exception as error:
        raise GradscopeError(
            f"the model's forward failed on a probe of shape {tuple(probe.inputs.shape)} "
            f"({type(error).__name__}: {first_line(error)}); pass --input-shape or --probe with "
            "the input it expects"
        ) from None
    per_step = grad.movedim(probe.time_axis, 0).reshape(probe.steps, probe.batch, -1)
    return pooled_norms(per_step)
