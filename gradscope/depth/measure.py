"""Measure a model's deep stack on a probe: the gradient at every block, and each block's gains."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from gradscope.dataflow import parameters_reached
from gradscope.depth.blocks import (
    Block,
    blocks_of,
    find_shortcut,
    recording,
    split_function,
    units,
)
from gradscope.depth.gains import RESIDUAL_TRACE, WholeGains, block_gains, whole_gains
from gradscope.depth.recurrences import (
    Recurrence,
    innermost,
    looped_modules,
    region,
    scans,
)
from gradscope.depth.time_mixing import (
    MIN_STEPS,
    MIXED_OUTSIDE,
    first_step_gradient,
    mixing_outside_blocks,
)
from gradscope.errors import GradscopeError
from gradscope.numerics import pooled_norm
from gradscope.options import AnalysisOptions
from gradscope.probe import (
    Probe,
    differentiable_output,
    output_tensors,
    projected_output,
    projection_loss,
    run_model,
)
from gradscope.probe.calls import every_call
from gradscope.report import DepthLayer, DepthStack
from gradscope.taxonomy import RECTIFYING, classes, is_recurrent, is_within

#: How the JVPs of a block went when its attention ran through the math backend.
MATH_ATTENTION = "jvp-math-attention"
#: Fewer blocks than this is no stack to speak of.
MIN_BLOCKS = 3
#: Autograd nodes that only view or reshape a tensor, and how many of them to follow.
VIEW_NODES = ("View", "Reshape", "Select", "Slice", "Squeeze", "Unsqueeze", "Permute", "Transpose")
VIEW_HOPS = 8
#: Dead ReLU units are only counted over a batch at least this large.
MIN_BATCH_FOR_DEAD = 8


@dataclass
class DepthResult:
    """The depth view of a model: its stack (None with fewer than MIN_BLOCKS blocks), the
    modules of every block found, the units it looked for, the parameters the output depends
    on (by id), and the recurrences found by behaviour (looped modules, scans, time mixed
    outside every block), which no view measured unless a recurrent view holds them."""

    stack: DepthStack | None
    layers: list[DepthLayer] = field(default_factory=list)
    block_modules: list[str] = field(default_factory=list)
    units: list[str] = field(default_factory=list)
    used: set[int] = field(default_factory=set)
    recurrences: list[Recurrence] = field(default_factory=list)


def saturated_fraction(module: nn.Module, y: Tensor) -> float | None:
    """Units whose derivative is below a tenth of its largest value (sigmoid, tanh, ...)."""
    y = y.detach()
    if isinstance(module, nn.Sigmoid):
        return float((y * (1 - y) < 0.025).double().mean())
    if isinstance(module, nn.Tanh):
        return float((1 - y * y < 0.1).double().mean())
    if isinstance(module, nn.Softsign):
        return float(((1 - y.abs()) ** 2 < 0.1).double().mean())
    if isinstance(module, nn.Hardtanh):  # also ReLU6's clamp, but ReLU6 counts as rectifying
        return float(((y <= module.min_val) | (y >= module.max_val)).double().mean())
    if isinstance(module, nn.Hardsigmoid):
        return float(((y <= 0) | (y >= 1)).double().mean())
    return None


def dead_fraction(module: nn.Module, y: Tensor, batch: int) -> float | None:
    """Rectifier units that are zero for every example of the batch."""
    if (
        not isinstance(module, classes(RECTIFYING))
        or batch < MIN_BATCH_FOR_DEAD
        or y.shape[0] != batch
    ):
        return None
    return float((y.detach().reshape(batch, -1) == 0).all(dim=0).double().mean())


def _branch_last(block: Block, shortcut: str | None = None) -> str | None:
    """The last module with parameters inside a one-module block (the end of its branch), not
    inside its projection ``shortcut``."""
    if len(block.calls) != 1:
        return None
    call = block.calls[0]
    last = None
    for name, module in call.module.named_modules():
        path = f"{call.name}.{name}" if call.name else name
        if shortcut and (path == shortcut or path.startswith(shortcut + ".")):
            continue
        if name and next(module.parameters(recurse=False), None) is not None:
            last = name
    return f"{call.name}.{last}" if last and call.name else last


def _changed_after(last: Block, returned: Tensor | None) -> bool:
    """Whether the model's code changes the last block's output before returning it: what it
    returns is neither that output nor a view of it (a selected step, a reshape)."""
    if returned is None or not returned.requires_grad or returned is last.output:
        return False
    node, stop = returned.grad_fn, last.output.grad_fn
    for _ in range(VIEW_HOPS):  # views of the output: one input each, no arithmetic
        if node is stop:
            return False
        if node is None or not node.name().startswith(VIEW_NODES):
            return True
        node = node.next_functions[0][0]
    return node is not stop


def _forward(
    model: nn.Module, probe: Probe, options: AnalysisOptions
) -> tuple[object, list[Block], dict, list[Recurrence]]:
    """Run the probe recording every unit and every module call; the calls of recurrent
    cells (named, or looped on their own state, returned) are steps over time, not blocks
    over depth, and are left out."""
    with recording(model, options.granularity) as calls, every_call(model) as log:
        output = run_model(model, probe, options.input_shape is not None)
    looped = looped_modules(log)
    cells = [*options.cells, *(found.module for found in looped)]
    calls = [call for call in calls if not (cells and is_within(call.name, cells))]
    blocks = blocks_of(calls, output)
    # a block whose output carries no gradient (a rotary embedding's cos and sin, computed
    # from positions), or that reads neither the probe nor a value the gradient flows back
    # to (a positional embedding reading the ids), is off the path the gradient takes
    on_path = [
        b
        for b in blocks
        if b.output.requires_grad and (_carries(b.input) or b.input is probe.inputs)
    ]
    # a first block that is an embedding whose output the next block does not read as it
    # stands (positions, added to the token embedding) does not start the stack
    while len(on_path) > MIN_BLOCKS and on_path[1].input is not on_path[0].output:
        if not all(isinstance(call.module, nn.Embedding) for call in on_path[0].calls):
            break
        on_path.pop(0)
    return output, on_path, log, looped


def _carries(value: Tensor) -> bool:
    """Whether ``value`` is on a gradient path: floating point, computed with autograd."""
    return value.is_floating_point() and value.requires_grad


def _regions(model: nn.Module, blocks: list[Block], log: dict) -> list:
    """The graph regions recurrences are named by: every call of a recurrent module (its own
    steps are not a hidden recurrence), then every block."""
    recurrent = [
        region(name, call.gives, call.reads)
        for name, calls in log.items()
        if is_recurrent(model.get_submodule(name))
        for call in calls
    ]
    return recurrent + [
        region(block.calls[0].name, [block.output], [block.input]) for block in blocks
    ]


def _whole_gains(
    model: nn.Module, probe: Probe, options: AnalysisOptions, output: object = None
) -> WholeGains:
    """(sigma_max, RMS singular value, method) of the input-output Jacobian; NaN RMS for token
    ids. With the probe run's ``output`` (its graph kept), its VJPs are taken on that graph."""
    if not probe.inputs.is_floating_point():
        return WholeGains(math.nan, math.nan, None)

    def whole(x: Tensor) -> Tensor:
        return projected_output(probe.call(model, x), probe, traced=False)

    def measure(taken: tuple | None) -> WholeGains:
        generator = torch.Generator().manual_seed(options.seed + 3)
        # one probe: each example of the batch draws its own, which averages them
        x = probe.inputs.detach()
        return whole_gains(whole, x, 1, options.power_iterations, generator, taken)

    taken = _taken(output, probe)
    try:
        return measure(taken)
    except Exception:
        if taken is None:
            return WholeGains(math.nan, math.nan, None)
    try:
        return measure(None)
    except Exception:
        return WholeGains(math.nan, math.nan, None)


def _taken(output: object, probe: Probe) -> tuple | None:
    """The projected output of the probe run and a VJP on its graph (kept), where the run read
    ``probe.inputs`` with a gradient and the output the loss reads is the one a transform reads."""
    if output is None or not probe.inputs.requires_grad:
        return None
    chosen = differentiable_output(output, probe.output_key)
    if chosen is None or chosen is not differentiable_output(output, probe.output_key, False):
        return None
    y = projected_output(output, probe)

    def pull(w: Tensor) -> Tensor:
        (gradient,) = torch.autograd.grad(y, probe.inputs, w, retain_graph=True)
        return gradient

    return y.detach(), pull


def selected_blocks(blocks: list[Block], options: AnalysisOptions) -> list[Block]:
    """The blocks ``--only`` selects (all without it): a block is selected when a module it
    calls is; they must run one after another, a stack of their own."""
    if not options.only:
        return blocks
    chosen = [i for i, b in enumerate(blocks) if any(options.selects(c.name) for c in b.calls)]
    if chosen and chosen != list(range(chosen[0], chosen[-1] + 1)):
        names = ", ".join(blocks[i].name for i in chosen[:6])
        raise GradscopeError(
            f"--only {' '.join(options.only)} selects blocks that do not run one after another "
            f"({names}): give a pattern for a run of blocks, such as 'layers.1*'"
        )
    return [blocks[i] for i in chosen]


def measure_depth(
    model: nn.Module, probe: Probe, options: AnalysisOptions, over_time: bool = False
) -> DepthResult:
    """The depth view of ``model`` on ``probe``; no stack with fewer than MIN_BLOCKS blocks.

    ``over_time``: a recurrent view follows the model's time axis, so time mixing outside the
    blocks is its to measure, not a gap.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warnings would break the one-line stderr
        return _measure(model, probe, options, over_time)


def _measure(
    model: nn.Module, probe: Probe, options: AnalysisOptions, over_time: bool
) -> DepthResult:
    output, every_block, log, looped = _forward(model, probe, options)
    blocks = selected_blocks(every_block, options)
    found = DepthResult(
        None,
        block_modules=list(dict.fromkeys(call.name for b in blocks for call in b.calls)),
        units=[name for name, _ in units(model, options.granularity)],
        used=parameters_reached(output_tensors(output)),
        recurrences=looped,
    )
    returned = differentiable_output(output, probe.output_key)
    if probe.time_axis is not None and probe.steps >= MIN_STEPS:
        time = (probe.time_axis, probe.steps, probe.inputs.dim())
        in_graph = scans(returned, _regions(model, blocks, log), time)
        found.recurrences = innermost([*looped, *in_graph])
    check_time = not over_time and probe.time_axis is not None and bool(blocks)
    if len(blocks) < MIN_BLOCKS and not check_time:
        return found
    loss = projection_loss(output, probe)
    first = blocks[0].input
    sources = [first] if first.requires_grad else []
    from_first_step = None
    if check_time and sources:  # before the main backward pass frees the graph
        from_first_step = first_step_gradient(returned, first, probe.time_axis, probe.steps)
    whole = WholeGains(math.nan, math.nan, None)
    # the whole model's Jacobian describes the stack unless --only took a run of its blocks
    narrowed = len(blocks) < len(every_block)
    if len(blocks) >= MIN_BLOCKS and not narrowed:  # before the backward pass frees the graph
        with torch.enable_grad():
            whole = _whole_gains(model, probe, options, output)
    # the output side: the last block's output, or what the model returns when its own code
    # changes that output first (a residual added in the parent's loop); with --only, the
    # last selected block's output unless it is the model's last block
    last = blocks[-1] is every_block[-1]
    ends = [returned] if last and _changed_after(blocks[-1], returned) else []
    # a block that does not read the block before's output as it stands (an encoder-
    # decoder's first decoder block): its gain needs the gradient at its own input
    unchained = {
        i: b.input
        for i, b in enumerate(blocks)
        if i > 0
        and b.input is not blocks[i - 1].output
        and b.input is not b.output  # written in place: its gradient is the output's
        and b.input.requires_grad
    }
    grads = torch.autograd.grad(
        loss,
        [*sources, *(b.output for b in blocks), *ends, *unchained.values()],
        allow_unused=True,
        retain_graph=False,
    )
    at_input = dict(zip(unchained, grads[len(grads) - len(unchained) :], strict=True))
    in_forward = any(r.module == "" for r in found.recurrences)
    if check_time and not in_forward:
        outside = mixing_outside_blocks(
            blocks,
            returned,
            grads[0] if sources else None,
            from_first_step,
            probe.time_axis,
            probe.steps,
        )
        if outside:
            found.recurrences.append(Recurrence("", MIXED_OUTSIDE))
    if len(blocks) < MIN_BLOCKS:
        return found
    batch = probe.batch
    norms = [pooled_norm(g, batch) for g in grads[len(sources) : len(sources) + len(blocks)]]
    inputs_at = {i: pooled_norm(g, batch) for i, g in at_input.items()}
    # an input that carries no gradient (ids): the stack starts at the first block's output
    input_grad = pooled_norm(grads[0], batch) if sources else norms[0]
    generator = torch.Generator().manual_seed(options.seed + 2)
    shortcuts = [find_shortcut(b) if b.has_weights() else None for b in blocks]
    gains = block_gains(
        [b.function() for b in blocks],
        [b.value for b in blocks],
        options.chi_probes,
        options.power_iterations,
        generator,
        [b.has_weights() for b in blocks],
        [split_function(b, s) if s else None for b, s in zip(blocks, shortcuts, strict=True)],
    )
    layers = []
    below = input_grad
    following = [*(b.input for b in blocks[1:]), None]
    rows = zip(blocks, norms, gains, following, shortcuts, strict=True)
    for index, (block, norm, gain, after, shortcut) in enumerate(rows):
        below = inputs_at.get(index, below)  # the gradient at what this block read
        shortcut = shortcut if gain.shortcut else None
        activation = block.activation()
        per_example = block.value.shape[0] if block.value.shape[0] == batch else 1
        layers.append(
            DepthLayer(
                name=block.name,
                type=block.type,
                modules=list(dict.fromkeys(call.name for call in block.calls)),
                input_size=block.value.numel() // per_example,
                output_size=block.output.numel() // per_example,
                grad_norm=norm,
                gain=below / norm if norm else math.nan,
                chi=gain.chi,
                sigma_max=gain.sigma_max,
                residual=gain.residual,
                branch_chi=gain.branch_chi,
                saturated=saturated_fraction(activation.module, activation.output)
                if activation
                else None,
                dead=dead_fraction(activation.module, activation.output, batch)
                if activation
                else None,
                activation=type(activation.module).__name__ if activation else None,
                parent=block.parent,
                indices=block.indices,
                branch_last=_branch_last(block, shortcut) if gain.residual else None,
                same_shape=block.value.shape == block.output.shape,
                chained=after is None or after is block.output,
                side_outputs=block.side_outputs,
                chi_rel_stderr=gain.chi_rel_stderr,
                sigma_max_method=gain.sigma_max_method,
                shortcut=shortcut,
            )
        )
        below = norm
    output_grad = pooled_norm(grads[-1], batch) if ends else norms[-1]
    ratio = input_grad / output_grad if output_grad else math.nan
    sigma = None if math.isnan(whole.sigma_max) else whole.sigma_max
    rms = whole.rms
    math_attention = [layer.name for layer in layers if layer.sigma_max_method == MATH_ATTENTION]
    stack = DepthStack(
        blocks=len(layers),
        input_grad_norm=input_grad,
        output_grad_norm=output_grad,
        decades=math.log10(ratio) if ratio > 0 else -math.inf if ratio == 0 else math.nan,
        gain_per_block=ratio ** (1 / len(layers)) if ratio >= 0 else math.nan,
        sigma_max=sigma,
        rms_singular_value=rms,
        spread=sigma / rms if sigma is not None and rms and math.isfinite(rms) else None,
        residual_blocks=sum(layer.residual for layer in layers),
        granularity=options.granularity,
        estimator={
            "chi": "Hutchinson: mean ||J^T u||^2 / n_out, u ~ N(0, I), batched VJPs",
            "chi_probes": options.chi_probes,
            "chi_rel_stderr": "sample standard deviation of the per-probe chi estimates / "
            "sqrt(chi_probes), over chi",
            "sigma_max": "power iteration on J^T J with JVPs and VJPs",
            "power_iterations": options.power_iterations,
            "sigma_max_method": (
                "jvp; attention through its math backend where the fused kernel has no "
                "forward derivative (each block's sigma_max_method says where)"
                if math_attention or whole.method == MATH_ATTENTION
                else "jvp"
            ),
            "residual": f"tr(J)/n > {RESIDUAL_TRACE} from the same probes; with a projection "
            f"shortcut, <J, P>_F / ||P||_F^2 > {RESIDUAL_TRACE}, P the shortcut path's Jacobian",
            "rms_singular_value": "sqrt(E ||J^T u||^2 / n_out) through the whole model, one "
            "random u per example",
        },
    )
    found.stack, found.layers = stack, layers
    return found
