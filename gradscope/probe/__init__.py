"""The probe: the input a model is driven with, and the scalar loss its gradients come from.

The loss is a fixed, seeded random unit vector ``w`` dotted with the model's output at the last
time step (the whole output when it has no time axis), summed over the batch. Every gradient
norm gradscope reports is a norm of the gradient of that loss.
"""

from gradscope.probe.inputs import Probe, given_probe, load_probe_file, make_probe, probe_for
from gradscope.probe.layout import Layout, feedforward_layout, first_parametrised, input_layout
from gradscope.probe.loss import (
    differentiable_output,
    output_tensors,
    projected_output,
    projection_loss,
    run_model,
    select_output,
)

__all__ = [
    "Layout",
    "Probe",
    "differentiable_output",
    "feedforward_layout",
    "first_parametrised",
    "given_probe",
    "input_layout",
    "load_probe_file",
    "make_probe",
    "output_tensors",
    "probe_for",
    "projected_output",
    "projection_loss",
    "run_model",
    "select_output",
]
