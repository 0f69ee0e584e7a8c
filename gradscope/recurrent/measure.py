"""Measure every recurrent core of a model on a probe: gradients, spectra, Lyapunov exponents."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gradscope.errors import GradscopeError, first_line
from gradscope.numerics import largest_singular_value, median_and_max, pooled_norms, spectral_radius
from gradscope.options import AnalysisOptions
from gradscope.probe import Probe, projection_loss, run_model
from gradscope.probe.calls import CellCall, every_call, observed_call
from gradscope.probe.gradient import by_step, input_leaf, per_step_input_norms
from gradscope.probe.trial import trial_run
from gradscope.progress import note
from gradscope.recurrent.cells import (
    CellSpec,
    CellWeights,
    gate_bias,
    gate_values,
    step_function,
)
from gradscope.recurrent.dynamics import (
    Jacobian,
    Linearise,
    autograd_linearisation,
    dense_spectra,
    lyapunov_exponents,
    matrix_free_spectra,
)
from gradscope.recurrent.linearised import jacobian_function, linearisation
from gradscope.recurrent.unroll import Trace, unrolled
from gradscope.report import (
    Extremes,
    GateSummary,
    JacobianSummary,
    KrylovResidual,
    RecurrentCore,
    WeightSummary,
    core_label,
)
from gradscope.theory import memory_horizon

#: States with at most this many dimensions get dense spectra (eigenvalues and singular values
#: of the materialised Jacobian); larger ones are estimated matrix-free, by Krylov methods on
#: products with the Jacobian, which cost less from about this size on
#: (``benchmarks/bench_spectra.py`` finds the crossover).
DENSE_UP_TO = 192
#: ``auto`` dense spectra, beyond every step: more batch elements, up to an eigendecomposition
#: budget worth this many Jacobians with 128-dimensional states (eig is cubic in the size).
DENSE_BUDGET = 100
#: Bytes for Jacobian work (dense chunks, Krylov bases) unless ``--max-memory`` says otherwise.
DEFAULT_WORKSPACE = 1 << 28


def is_matrix_free(state_size: int) -> bool:
    """Whether states of this size get matrix-free spectra."""
    return state_size > DENSE_UP_TO


def spectrum_sample_count(setting: int | str, steps: int, batch: int, state_size: int) -> int:
    """How many (step, batch element) Jacobians get their spectra measured.

    ``all``: every one. ``N``: N evenly spaced steps, every batch element. ``auto``: every
    step; with a batch, for dense spectra as many more elements as DENSE_BUDGET allows, and
    for matrix-free ones one element per step, in turn.
    """
    total = steps * batch
    if setting == "all":
        return total
    if isinstance(setting, int):
        return min(steps, setting) * batch
    if is_matrix_free(state_size):
        return min(total, steps)
    return min(total, max(steps, int(DENSE_BUDGET * (128 / state_size) ** 3)))


#: The Pascanu et al. bound on sigma_max(W_hh) is 1/gamma, gamma = max |activation'| = 1.
PASCANU_GAMMA = {"rnn_tanh": 1.0, "rnn_relu": 1.0}


@dataclass
class RecurrentMeasurement:
    """The measured cores (not yet judged) and the model-level input gradient."""

    cores: list[RecurrentCore]
    input_grad_norm: list[float] | None
    notes: list[str]


def cell_calls(
    model: nn.Module, probe: Probe, cells: tuple[str, ...]
) -> dict[str, CellCall | None]:
    """How the model calls each custom cell, as a run of the probe shows it (None where the
    run does not show which argument is the state)."""
    if not cells:
        return {}
    with every_call(model) as log:
        trial_run(lambda: probe.call(model))
    names = {id(module): name for name, module in model.named_modules()}

    def calls_of(cell: str) -> list:
        try:
            return log.get(names[id(model.get_submodule(cell))], [])
        except (AttributeError, KeyError):
            return []

    return {cell: observed_call(calls_of(cell)) for cell in cells}


def run_probe(
    model: nn.Module, probe: Probe, cells: tuple[str, ...] = ()
) -> tuple[Tensor, dict[tuple, Trace]]:
    """Forward the probe through the unrolled model; return the loss and each core's trace.

    ``cells`` are the module paths of custom cells, stepped as recurrent cores too.
    """
    with unrolled(model, cell_calls(model, probe, cells)) as recorder:
        output = run_model(model, probe)
    if not recorder.traces:
        raise GradscopeError(
            "no recurrent module (nn.RNN, nn.LSTM, nn.GRU or a cell) ran on the probe; "
            "gradscope's recurrent analysis needs one (name a custom cell with --cell)"
        )
    check_layout(recorder.traces, probe)
    return projection_loss(output, probe), recorder.traces


def check_layout(traces: dict[tuple, Trace], probe: Probe) -> None:
    """Refuse a probe whose time and batch axes the model read the other way round."""
    trace = traces.get((probe.layout_module, 0, "forward"))
    if trace is None or probe.batch_axis is None or probe.steps == probe.batch:
        return
    first = trace.calls[0]
    ran = trace.steps if trace.core.is_cell else len(first.states)
    if (ran, first.batch) == (probe.batch, probe.steps):
        other = "--batch-first" if probe.time_axis == 0 else "--time-major"
        raise GradscopeError(
            f"{trace.core.name or 'the model'} ran {ran} step(s) over a batch of {first.batch} "
            f"from a probe of {probe.steps} steps x batch {probe.batch}: the model reads time "
            f"on the other axis; rerun with {other}"
        )


def per_step_norms(per_step: Tensor) -> list[float]:
    """``sqrt(mean_b ||g_b||^2)`` for each step of a (steps, batch, ...) tensor."""
    return pooled_norms(per_step, per_step.shape[1])


def _summary(values: Tensor) -> Extremes:
    return Extremes(*median_and_max(values))


def _largest(values: Tensor) -> float:
    return float(values.max()) if values.numel() else math.nan


def spectrum_samples(setting: int | str, steps: int, batch: int, state_size: int) -> Tensor:
    """Flat (step * batch + element) indices of the Jacobians whose spectra are computed."""
    count = spectrum_sample_count(setting, steps, batch, state_size)
    if setting == "auto" and count == steps:
        return torch.arange(steps) * batch + torch.arange(steps) % batch
    if isinstance(setting, int):
        chosen = torch.linspace(0, steps - 1, count // batch).round().long().unique()
        return (chosen[:, None] * batch + torch.arange(batch)).flatten()
    return torch.linspace(0, steps * batch - 1, count).round().long().unique()


def _jacobian_summary(
    step: Callable,
    states: Tensor,
    drives: Tensor,
    options: AnalysisOptions,
    closed: Jacobian | None = None,
    linearise: Linearise | None = None,
    label: str = "",
) -> JacobianSummary:
    """Spectra of the chosen steps' Jacobians: dense (``closed`` form or torch.func) for small
    states, matrix-free (``linearise``, else torch.func and autograd) for large ones.
    ``label`` names the core in progress notes."""
    steps, batch, n = states.shape
    chosen = spectrum_samples(options.spectrum_steps, steps, batch, n).to(states.device)
    rows, row_drives = states.reshape(-1, n)[chosen], drives.reshape(steps * batch, -1)[chosen]
    workspace = options.max_memory or DEFAULT_WORKSPACE
    if is_matrix_free(n):
        spectra = matrix_free_spectra(
            linearise or (lambda s, u: autograd_linearisation(step, s, u)),
            rows,
            row_drives,
            workspace,
            torch.Generator().manual_seed(options.seed),
            label,
        )
        radius, sigma = spectra.spectral_radius, spectra.sigma_max
        return JacobianSummary(
            spectral_radius=_summary(radius.values),
            sigma_max=_summary(sigma.values),
            samples=len(chosen),
            method="krylov",
            residual=KrylovResidual(_largest(radius.residuals), _largest(sigma.residuals)),
        )
    note(f"{label}: eigenvalues of {len(chosen)} step Jacobians")
    spectra = dense_spectra(step, rows, row_drives, closed, workspace)
    radius, sigma = spectra if spectra is not None else (rows.new_empty(0), rows.new_empty(0))
    return JacobianSummary(
        spectral_radius=_summary(radius), sigma_max=_summary(sigma), samples=len(chosen)
    )


def _gate_summary(
    spec: CellSpec, weights: CellWeights | None, states: Tensor, drives: Tensor
) -> GateSummary | None:
    """Mean keeping gate (LSTM forget, GRU update) along the trajectory, and its mean bias."""
    gate = None if weights is None else gate_values(spec, weights, states, drives)
    if gate is None:
        return None
    bias = gate_bias(spec, weights)
    return GateSummary(
        gate="forget" if spec.kind == "lstm" else "update",
        mean=float(gate.mean()),
        bias_mean=None if bias is None else float(bias.mean()),
    )


def _weight_summary(spec: CellSpec, weights: CellWeights | None) -> WeightSummary | None:
    """Vanilla RNN: spectral radius and sigma_max of W_hh against Pascanu's bound."""
    gamma = PASCANU_GAMMA.get(spec.kind)
    if gamma is None or weights is None:
        return None
    w_hh = weights.weight_hh
    finite = bool(torch.isfinite(w_hh).all())  # LAPACK refuses NaN and Inf
    return WeightSummary(
        spectral_radius=float(spectral_radius(w_hh)) if finite else math.nan,
        sigma_max=float(largest_singular_value(w_hh)) if finite else math.nan,
        pascanu_bound=1 / gamma,
    )


def _or_zeros(grad: Tensor | None, state: Tensor) -> Tensor:
    """The gradient at a state, zeros where the loss does not depend on it."""
    return torch.zeros_like(state) if grad is None else grad


def _gathered(grads: list[Tensor | None], targets: list[Tensor], state: Tensor) -> Tensor:
    """The gradient at a flat state (B, n) from the gradients at the tensors it is made of."""
    if len(targets) == 1 and targets[0] is state:
        return _or_zeros(grads[0], state)
    return torch.cat(
        [_or_zeros(g, t).reshape(len(state), -1) for g, t in zip(grads, targets, strict=True)],
        dim=-1,
    )


def _guarded(step: Callable, name: str) -> Callable:
    """A custom cell's step whose failures (its own code, met on inputs it never saw) are one
    line naming the cell."""

    def guarded(s: Tensor, u: Tensor) -> Tensor:
        try:
            return step(s, u)
        except GradscopeError:
            raise
        except Exception as error:
            raise GradscopeError(
                f"--cell {name} could not be stepped on its own ({type(error).__name__}: "
                f"{first_line(error)}): name the module the model calls once per time step, "
                "whose forward maps (input, state) to the next state"
            ) from None

    return guarded


#: How far a custom cell stepped on its own may stray from what the model computed, relative
#: to the size of the states: far above rounding, far below a cell stepped on wrong arguments.
REPRODUCTION_TOLERANCE = 1e-3


def check_reproduced(trace: Trace, step: Callable) -> None:
    """Refuse a custom cell that, stepped on its own from the recorded states and held
    tensors, does not give the states the model computed: it reads something gradscope does
    not hold (a value kept on the module, randomness), or held a tensor the wrong way."""
    states, drives = trace.trajectory()
    computed = trace.next_states()
    if not bool(torch.isfinite(computed).all()):
        return
    n = states.shape[-1]
    with torch.no_grad():
        stepped = step(states.reshape(-1, n), drives.reshape(len(states) * states.shape[1], -1))
    scale = 1 + float(computed.abs().max())
    error = float((stepped.reshape(computed.shape) - computed).abs().max())
    if not error <= REPRODUCTION_TOLERANCE * scale:
        raise GradscopeError(
            f"--cell {trace.core.name} stepped on its own from the states and arguments the "
            f"model gave it does not give the states the model computed (they differ by up to "
            f"{error:.3g}); the cell reads something besides its arguments (a value kept on "
            "the module, randomness): gradscope cannot step it"
        )


#: The fields of a core its label is made of.
LABEL_FIELDS = ("name", "layer", "direction", "is_cell", "num_layers", "bidirectional")


def measure_core(
    trace: Trace, grads: list[Tensor | None], options: AnalysisOptions
) -> RecurrentCore:
    """All measurements of one core from its trace and the gradients at its states."""
    core, spec = trace.core, trace.core.spec
    states, drives = trace.trajectory()
    steps = len(states)
    grads = iter(grads)
    norms = [
        norm
        for call in trace.calls
        for norm in per_step_norms(
            torch.stack([_or_zeros(next(grads), state) for state in call.states])
        )
    ]
    weights = None if core.weights is None else core.weights.detached()
    step = core.custom.step_function() if core.custom else step_function(spec, weights)
    if core.custom:
        if len(trace.calls) < 2:
            raise GradscopeError(
                f"--cell {core.name} ran once on the probe of {options.steps} steps, so it "
                "computes the whole sequence, not one step: name the module the model calls "
                "once per time step"
            )
        step = _guarded(step, core.name)
        check_reproduced(trace, step)
    finite = bool(torch.isfinite(states).all() and torch.isfinite(drives).all())
    finite = finite and all(math.isfinite(v) for v in norms)
    burn_in = options.burn_in if options.burn_in < steps else steps // 5
    exponents = [math.nan]
    unmeasured = Extremes(math.nan, math.nan)
    jacobian = JacobianSummary(unmeasured, unmeasured, samples=0)
    if finite:
        generator = torch.Generator().manual_seed(options.seed)
        count = min(options.exponents, spec.state_size)
        builtin = weights is not None and not core.custom
        linearise = (lambda s, u: linearisation(spec, weights, s, u)) if builtin else None
        label = core_label({field: getattr(core, field) for field in LABEL_FIELDS})
        note(f"{label}: Lyapunov exponents over {steps} steps")
        per_element = lyapunov_exponents(step, states, drives, count, burn_in, generator, linearise)
        exponents = per_element.sort(dim=-1, descending=True).values.mean(0).tolist()
        jacobian = _jacobian_summary(
            step,
            states,
            drives,
            options,
            jacobian_function(spec, weights) if builtin else None,
            linearise,
            label,
        )
    return RecurrentCore(
        name=core.name,
        cell=spec.kind,
        layer=core.layer,
        direction=core.direction,
        input_size=spec.input_size,
        hidden_size=spec.hidden_size,
        state_size=spec.state_size,
        proj_size=spec.proj_size,
        steps=trace.steps,
        grad_norm=trace.time_order(norms),
        lyapunov=exponents,
        memory_horizon=memory_horizon(exponents[0], options.epsilon),
        jacobian=jacobian,
        burn_in=burn_in,
        num_layers=core.num_layers,
        bidirectional=core.bidirectional,
        batch_first=core.batch_first,
        is_cell=core.is_cell,
        gates=_gate_summary(spec, weights, states, drives) if finite else None,
        weights=_weight_summary(spec, weights),
        finite=finite,
        state=core.custom.state() if core.custom else None,
    )


def matrix_free_note(core: RecurrentCore) -> str:
    """How a core's spectra were estimated without materialising its Jacobians."""
    residual = core.jacobian.residual
    return (
        f"{core.label}: rho(J) and sigma max of its {core.state_size}-dimensional "
        f"step Jacobians estimated matrix-free at {core.jacobian.samples} (step, element) "
        "pairs, by Arnoldi and Golub-Kahan iterations on Jacobian products (largest relative "
        f"residuals {residual.spectral_radius:.1g} and {residual.sigma_max:.1g})"
    )


def selected_traces(traces: dict[tuple, Trace], options: AnalysisOptions) -> dict[tuple, Trace]:
    """The traces of the cores ``--only`` selects (all without it)."""
    return {key: trace for key, trace in traces.items() if options.selects(trace.core.name)}


def measure_recurrent(
    model: nn.Module, probe: Probe, options: AnalysisOptions
) -> RecurrentMeasurement:
    """Run the probe once, backpropagate once, and measure every recurrent core."""
    with input_leaf(model, probe) as leaf:
        loss, traces = run_probe(model, probe, options.cells)
        inputs = leaf()
    leaves = inputs.tensors if inputs is not None else []
    idle = [name for name in options.cells if (name, 0, "forward") not in traces]
    if idle:
        raise GradscopeError(
            f"--cell {', '.join(idle)} never ran on the probe; name the module the model calls "
            "once per time step as cell(input, state)"
        )
    traces = selected_traces(traces, options)
    targets = [trace.gradient_targets() for trace in traces.values()]
    flat = [t for per_trace in targets for per_state in per_trace for t in per_state]
    grads = torch.autograd.grad(loss, [*leaves, *flat], allow_unused=True)
    input_grads = grads[: len(leaves)]
    state_grads = iter(grads[len(leaves) :])
    cores = [
        measure_core(
            trace,
            [
                _gathered([next(state_grads) for _ in per_state], per_state, state)
                for per_state, state in zip(per_trace, trace.states, strict=True)
            ],
            options,
        )
        for trace, per_trace in zip(traces.values(), targets, strict=True)
    ]
    input_grad_norm = None
    if inputs is not None and probe.time_axis is not None:
        # for token ids, the gradient at their embedding: ||dL/de_t||
        input_grad_norm = per_step_input_norms(by_step(input_grads, inputs, probe))
    notes = [
        trace.core.custom.describe(trace.core.name)
        for trace in traces.values()
        if trace.core.custom is not None
    ]
    notes += [matrix_free_note(core) for core in cores if core.jacobian.method == "krylov"]
    notes += [
        f"{trace.core.name or '(model)'}: what it reads at a step is computed from its state "
        "the step before, through other modules (an autoregressive readout, an attention "
        "context); its Jacobians and exponents hold that input as the model gave it, so they "
        "leave that feedback out, while ||dL/ds_t|| and the sequence view include it"
        for trace in traces.values()
        if trace.fed_back
    ]
    notes += [
        f"{trace.core.name}: the state it is given at a step is not the one it returned the "
        "step before: the model changes it in between (another cell stepped before it, a "
        "normalisation); its Jacobians and exponents are its own map, without that change, "
        "while ||dL/ds_t|| and the sequence view include it"
        for trace in traces.values()
        if trace.state_changed
    ]
    notes += [unreached_note(core) for core in cores if unreached(core)]
    return RecurrentMeasurement(cores, input_grad_norm, notes)


def unreached(core: RecurrentCore) -> bool:
    """True when the loss reaches the core's state at the last step alone: ``||dL/ds||`` is
    exactly 0 at every earlier lag (the top layer's reverse direction starts at that step)."""
    by_lag = core.grad_norm_by_lag
    return len(by_lag) > 1 and by_lag[0] > 0 and all(v == 0 for v in by_lag[1:])


def unreached_note(core: RecurrentCore) -> str:
    """Why that core's gradient chart holds a single point, and what its verdict rests on."""
    where = " (a reverse direction starts at the last step)" if core.direction == "reverse" else ""
    return (
        f"{core.label}: ||dL/ds|| is exactly 0 before the last step: the loss reads this core "
        f"only there{where}, so no gradient flows back through its steps; its exponents, "
        "horizon and status describe its own dynamics, for a loss read at every step"
    )
