"""Models gradscope cannot step from inside: weights without a class, and saved programs.

Each recurrent part rebuilt from the weights (:mod:`gradscope.loading.inference`) runs on its
own, on a probe of its own input size; layer k of a stacked module is fed by layer k-1, as in
the model. A saved program still runs as a whole for the model's input gradient.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gradscope.errors import GradscopeError, first_line
from gradscope.loading.inference import InferredPart
from gradscope.options import AnalysisOptions
from gradscope.probe import Probe, given_probe, make_probe, projection_loss, run_model
from gradscope.recurrent.measure import measure_recurrent, per_step_norms
from gradscope.report import RecurrentCore


def hold(holder: nn.Module, path: str, module: nn.Module) -> None:
    """Put ``module`` at ``path`` (``encoder.rnn``) inside ``holder``, with plain modules for
    the parents it lacks."""
    *parents, last = path.split(".")
    for name in parents:
        if not hasattr(holder, name):
            holder.add_module(name, nn.Module())
        holder = getattr(holder, name)
    holder.add_module(last, module)


class PartRunner(nn.Module):
    """One rebuilt part at its path in the model, run over a whole sequence.

    A cell is looped over the time axis (axis 1 batch-first, else 0); a module runs as is.
    """

    def __init__(self, part: InferredPart, batch_first: bool) -> None:
        super().__init__()
        hold(self, part.name or "cell", part.module)
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


@dataclass
class PartsMeasurement:
    """The cores of every rebuilt part, and the probe length and shape they ran with."""

    cores: list[RecurrentCore]
    steps: int
    batch: int
    input_shape: list[int]
    notes: list[str]


def _fits(part: InferredPart, shape: tuple[int, ...] | None) -> bool:
    return shape is not None and shape[-1] == part.module.input_size


def measure_parts(
    parts: list[InferredPart], options: AnalysisOptions, device: torch.device
) -> PartsMeasurement:
    """Measure every rebuilt part on its own, on probes of the options' length.

    A ``--probe`` file or ``--input-shape`` drives the parts whose input size it fits; the
    others run on a gaussian probe of the same length. One that fits no part is an error.
    """
    given = None
    if not options.builtin_probe:
        tensor = given_probe(options)
        given = tuple(tensor.shape) if tensor.is_floating_point() else None
    elif options.input_shape is not None:
        given = options.input_shape
    fitting = [part for part in parts if _fits(part, given)]
    if given is not None and not fitting:
        what = (
            "--input-shape"
            if options.builtin_probe
            else f"--probe {options.probe if options.probe_kind == 'file' else '(a tensor)'}"
        )
        sizes = ", ".join(f"{p.name or '(model)'} {p.module.input_size}" for p in parts)
        raise GradscopeError(
            f"{what} of shape {given} fits none of the parts rebuilt from the weights (input "
            f"sizes: {sizes}); give features of one of these sizes last"
        )
    ordered = fitting + [part for part in parts if part not in fitting]
    cores: dict[str, list[RecurrentCore]] = {}
    dtype = getattr(torch, options.float_dtype)
    steps, batch, shape, notes = options.steps, options.batch, None, []
    for part in ordered:
        own = part in fitting
        part_options = dataclasses.replace(
            options,
            probe=options.probe if own else "gaussian",
            input_shape=options.input_shape if own else None,
            steps=steps,
            batch=batch,
            output_key=None,  # the key names an output of the whole model, not of a part
            cells=(),
        )
        batch_first = bool(getattr(part.module, "batch_first", options.batch_first is not False))
        alone = not part.name and not part.is_cell  # a root module runs as it is
        runner = part.module if alone else PartRunner(part, batch_first)
        runner = runner.to(device=device, dtype=dtype).eval()
        runner.requires_grad_(True)
        probe = make_probe(runner, part_options, device)
        if shape is None:
            steps, batch, shape = probe.steps, probe.batch, list(probe.inputs.shape)
        with torch.enable_grad():
            measured = measure_recurrent(runner, probe, part_options.for_steps(steps, batch))
        cores[part.name] = [dataclasses.replace(core, name=part.name) for core in measured.cores]
    if fitting and len(fitting) < len(parts):
        names = ", ".join(p.name or "(model)" for p in parts if p not in fitting)
        notes.append(f"{names}: the probe does not fit its input size; ran on a gaussian probe")
    in_order = [core for part in parts for core in cores[part.name]]
    return PartsMeasurement(in_order, steps, batch, shape, notes)


def whole_input_gradient(module: nn.Module, probe: Probe) -> list[float] | None:
    """``||dL/dx_t||`` per step of the whole model, by one forward and one backward pass.

    None for token inputs, which have no gradient.
    """
    if not probe.inputs.requires_grad:
        return None
    # cuDNN's RNN backward refuses eval mode; the program runs in eval mode
    with torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
        loss = projection_loss(run_model(module, probe), probe)
        try:
            (grad,) = torch.autograd.grad(loss, [probe.inputs])
        except RuntimeError as error:
            raise GradscopeError(
                f"the model's backward failed ({first_line(error)}); its input gradient needs "
                "a model that backpropagates to its input"
            ) from None
    per_step = grad.movedim(probe.time_axis, 0).reshape(probe.steps, probe.batch, -1)
    return per_step_norms(per_step)
