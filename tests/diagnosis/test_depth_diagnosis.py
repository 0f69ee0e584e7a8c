"""The depth verdict, its findings and fixes on plain numbers; every depth snippet run on a model.

The numbers follow the feed-forward rows of docs/oracles.md: a depth-50 sigmoid MLP with Xavier
init loses about 30.7 decades, a ReLU MLP with He init about 0.1, residual blocks with alpha = 1
gain about 7.5 and with alpha = 1/sqrt(50) about 0.2.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from torch import nn

import gradscope
from gradscope.diagnosis.verdict import assess_depth, depth_status
from gradscope.report import DepthLayer, DepthStack, Fix

from tests.helpers.samples import core, depth_stack, judge, mlp_layers, resnet_layers

EPSILON = 1e-3


def diagnosed(layers: list[DepthLayer], cores=(), **stack_fields):
    """``diagnose`` on a stack built from ``layers``: (status, stack, findings, fixes by id)."""
    stack = depth_stack(layers, **stack_fields)
    status, _, assessed, findings, fixes = judge(list(cores), EPSILON, stack, layers)
    return status, assessed, findings, {fix.id: fix for fix in fixes}


# --- the verdict over depth ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layers", "decades", "expected"),
    [
        (mlp_layers(decades=-30.7, chi=0.0557), -30.7, "vanishing"),
        (mlp_layers(decades=0.1, activation="ReLU", chi=1.0), 0.1, "healthy"),
        (resnet_layers(alpha=1.0), 7.5, "exploding"),
        (resnet_layers(alpha=1 / math.sqrt(50)), 0.2, "healthy"),
    ],
    ids=["sigmoid-xavier", "relu-he", "residual-alpha-1", "residual-alpha-1/sqrt(50)"],
)
def test_the_oracle_stacks_get_the_oracle_verdicts(layers, decades, expected):
    stack = assess_depth(depth_stack(layers), layers, EPSILON)
    assert stack.decades == pytest.approx(decades, abs=0.05)
    assert stack.status == expected
    assert stack.distance == 50


def test_the_rule_is_the_gradient_ratio_against_epsilon_either_way():
    layers = mlp_layers(blocks=10, decades=-3.0)
    at_epsilon = depth_stack(layers, input_grad_norm=1e-3, output_grad_norm=1.0)
    assert depth_status(at_epsilon, layers, EPSILON) == "healthy"
    below = dataclasses.replace(at_epsilon, input_grad_norm=0.99e-3)
    assert depth_status(below, layers, EPSILON) == "vanishing"
    at_inverse = dataclasses.replace(at_epsilon, input_grad_norm=1e3)
    assert depth_status(at_inverse, layers, EPSILON) == "healthy"
    above = dataclasses.replace(at_epsilon, input_grad_norm=1.01e3)
    assert depth_status(above, layers, EPSILON) == "exploding"
    assert depth_status(below, layers, 1e-4) == "healthy"


def test_assessing_returns_a_new_stack_with_its_status_and_depth_as_horizon():
    layers = mlp_layers(blocks=12, decades=-5.0)
    stack = depth_stack(layers)
    assessed = assess_depth(stack, layers, EPSILON)
    assert (assessed.status, assessed.distance) == ("vanishing", 12)
    assert (stack.status, stack.distance) == ("healthy", 0)


@pytest.mark.parametrize(
    "damage",
    [
        lambda stack, layers: (dataclasses.replace(stack, input_grad_norm=math.nan), layers),
        lambda stack, layers: (dataclasses.replace(stack, output_grad_norm=math.inf), layers),
        lambda stack, layers: (stack, _replace(layers, 3, grad_norm=math.inf)),
        lambda stack, layers: (stack, _replace(layers, 3, gain=math.nan)),
        lambda stack, layers: (stack, _replace(layers, 3, chi=math.nan)),
        lambda stack, layers: (stack, _replace(layers, 3, branch_chi=math.inf)),
    ],
    ids=["input-grad", "output-grad", "block-grad", "block-gain", "chi", "branch-chi"],
)
def test_nan_or_inf_in_a_number_the_verdict_reads_is_nonfinite(damage):
    stack, layers = damage(depth_stack(resnet_layers(blocks=8, alpha=0.1)), resnet_layers(8, 0.1))
    assert depth_status(stack, layers, EPSILON) == "nonfinite"


def _replace(layers: list[DepthLayer], index: int, **fields) -> list[DepthLayer]:
    return [dataclasses.replace(x, **fields) if i == index else x for i, x in enumerate(layers)]


def test_a_dead_block_is_vanishing_not_nonfinite():
    """No gradient past a dead block: its gain is 0/0 by construction, the input side gets 0."""
    layers = mlp_layers(blocks=6, decades=0.0, activation="ReLU", chi=1.0)
    layers = [dataclasses.replace(x, grad_norm=0.0, gain=math.nan) for x in layers[:3]] + layers[3:]
    layers[3] = dataclasses.replace(layers[3], gain=0.0, chi=0.0, dead=1.0)
    stack = depth_stack(layers, input_grad_norm=0.0)
    status, _, findings, fixes = diagnosed(layers, input_grad_norm=0.0)
    assert depth_status(stack, layers, EPSILON) == status == "vanishing"
    assert "no gradient reaches the input side" in findings[0].message
    assert "normalization" in fixes


def test_a_stack_without_any_gradient_has_nothing_to_judge():
    layers = mlp_layers(blocks=5, decades=0.0)
    stack = depth_stack(layers, input_grad_norm=0.0, output_grad_norm=0.0)
    assert depth_status(stack, layers, EPSILON) == "healthy"


# --- the worst of cores and stack -------------------------------------------------------------


def test_without_a_stack_diagnose_is_what_it_was_for_cores():
    status, _, stack, _, fixes = judge([core("rnn_tanh", -0.675)], EPSILON)
    assert (status, stack) == ("vanishing", None)
    assert [fix.id for fix in fixes] == ["use-lstm", "use-gru"]


@pytest.mark.parametrize(
    ("cores", "layers", "expected"),
    [
        ([core("lstm", -0.5)], resnet_layers(alpha=1.0), "exploding"),
        ([core("lstm", -0.01)], mlp_layers(decades=-30.7), "vanishing"),
        ([core("rnn_tanh", 0.158)], mlp_layers(decades=-30.7), "exploding"),
        ([core("lstm", -0.01)], mlp_layers(decades=0.1, activation="ReLU"), "healthy"),
        ([core("rnn_tanh", 0.158)], _replace(mlp_layers(), 0, chi=math.nan), "nonfinite"),
    ],
)
def test_the_overall_status_is_the_worst_of_cores_and_stack(cores, layers, expected):
    status, _, _, _ = diagnosed(layers, cores)
    assert status == expected


def test_findings_put_the_worst_first_whether_core_or_stack():
    _, _, findings, fixes = diagnosed(resnet_layers(alpha=1.0), [core("lstm", -0.5)])
    assert [(f.kind, "stack" in f.where) for f in findings] == [
        ("exploding", True),
        ("vanishing", False),
    ]
    assert list(fixes) == ["scale-residual-branch", "clip-grad-norm", "forget-gate-bias"]


# --- findings ---------------------------------------------------------------------------------


def test_a_vanishing_sigmoid_stack_says_how_much_per_block_and_why():
    layers = mlp_layers(decades=-30.7, chi=0.0557, saturated=0.31)
    layers[0] = dataclasses.replace(layers[0], saturated=0.05)
    layers[1] = dataclasses.replace(layers[1], saturated=0.08)
    status, stack, (finding,), _ = diagnosed(layers)
    assert (status, stack.status) == ("vanishing", "vanishing")
    assert finding.id == "vanishing-gradient" and finding.kind == "vanishing"
    assert finding.where == {"stack": "depth", "blocks": 50, "first": "0+1", "last": "98+99"}
    assert finding.message.startswith(
        "depth (50 blocks): the gradient shrinks 10^30.7 from the output to the input "
        "(x0.243 per block); 50 of 50 blocks use Sigmoid, whose slope is at most 0.25: "
        "per-block gain chi = 0.0557 (geometric mean); "
        "48 of 50 blocks saturate their Sigmoid units (mean 30%)"
    )


def test_a_relu_stack_with_a_poor_init_blames_the_init_scale():
    layers = mlp_layers(decades=-4.4, activation="ReLU", chi=0.667, dead=0.02)
    (finding,) = diagnosed(layers, spread=40.0)[2]
    assert "per-block gain chi = 0.667 (geometric mean) with ReLU units" in finding.message
    assert "He init gives 1" in finding.message
    assert "singular values spread x40" in finding.message
    assert "dead" not in finding.message and "saturate" not in finding.message


def test_dead_relus_are_named():
    layers = mlp_layers(decades=-6.0, activation="ReLU", chi=1.0, dead=0.4)
    (finding,) = diagnosed(layers)[2]
    assert "50 of 50 blocks have dead ReLU units (mean 40%)" in finding.message


def test_an_exploding_residual_stack_names_its_unscaled_branches():
    (finding,) = diagnosed(resnet_layers(alpha=1.0))[2]
    assert finding.id == "exploding-gradient"
    assert finding.where == {
        "stack": "depth",
        "blocks": 50,
        "first": "blocks.0",
        "last": "blocks.49",
    }
    assert "grows 10^7.5 from the output to the input (x1.41 per block)" in finding.message
    assert "50 residual blocks with branch gain chi_B = 1 (mean)" in finding.message
    assert "sqrt(1 + chi_B) = 1.41" in finding.message
    assert finding.message.endswith("updates will blow up without clipping.")


def test_a_nonfinite_stack_points_at_the_first_bad_block():
    layers = _replace(mlp_layers(blocks=10, decades=-1.0), 4, grad_norm=math.nan)
    (finding,) = diagnosed(layers)[2]
    assert finding.id == "nonfinite-values" and finding.fixes == ["clip-grad-norm"]
    assert "first at 8+9" in finding.message


def test_a_healthy_stack_has_no_findings():
    assert diagnosed(resnet_layers(alpha=1 / math.sqrt(50)))[2:] == ([], {})


# --- which fixes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        (
            mlp_layers(decades=-30.7, chi=0.0557, saturated=0.31),
            ["residual-connections", "change-activation", "init-gain", "normalization"],
        ),
        (
            mlp_layers(decades=-30.7, chi=0.0557, saturated=0.01),
            ["residual-connections", "change-activation", "init-gain"],
        ),
        (
            mlp_layers(decades=-12.0, activation="Tanh", chi=0.33, saturated=0.5),
            ["residual-connections", "change-activation", "init-gain", "normalization"],
        ),
        (
            mlp_layers(decades=-4.4, activation="ReLU", chi=0.667),
            ["residual-connections", "init-gain", "orthogonal-init"],
        ),
        (
            mlp_layers(decades=-5.0, activation=None, chi=0.63),
            ["residual-connections", "init-gain", "orthogonal-init"],
        ),
        (
            mlp_layers(decades=-4.0, activation="GELU", chi=0.5),
            ["residual-connections", "init-gain"],
        ),
        (
            mlp_layers(decades=-6.0, activation="ReLU", chi=1.0, dead=0.4),
            ["residual-connections", "normalization"],
        ),
        (
            mlp_layers(decades=-30.7, chi=0.0557, input_size=512, output_size=256),
            ["change-activation", "init-gain"],
        ),
        (resnet_layers(alpha=1.0), ["scale-residual-branch", "clip-grad-norm"]),
        (
            mlp_layers(decades=7.0, activation="ReLU", chi=1.9),
            ["init-gain", "orthogonal-init", "clip-grad-norm"],
        ),
        (_replace(resnet_layers(alpha=1.0), 7, gain=math.inf), ["clip-grad-norm"]),
    ],
    ids=[
        "sigmoid-saturated",
        "sigmoid",
        "tanh-saturated",
        "relu-poor-init",
        "linear-poor-init",
        "gelu-poor-init",
        "relu-dead",
        "sigmoid-changing-shape",
        "residual-exploding",
        "plain-exploding",
        "nonfinite",
    ],
)
def test_each_case_gets_its_fixes(layers, expected):
    _, _, (finding,), fixes = diagnosed(layers)
    assert finding.fixes == expected
    assert list(fixes) == expected
    for fix in fixes.values():
        assert fix.title and fix.detail.startswith("Why: depth (50 blocks)")
        assert all(len(line) <= 76 for line in fix.snippet.splitlines()), fix.snippet


def test_each_detail_names_the_measurement_behind_it():
    _, _, _, fixes = diagnosed(mlp_layers(decades=-30.7, chi=0.0557, saturated=0.31))
    assert "50 of 50 blocks keep their shape (512 -> 512)" in fixes["residual-connections"].detail
    assert "use Sigmoid, whose slope is at most 0.25" in fixes["change-activation"].detail
    assert "chi = 0.0557" in fixes["init-gain"].detail
    assert "He init gives 1" in fixes["init-gain"].detail
    assert "saturate their Sigmoid units (mean 31%)" in fixes["normalization"].detail
    residual = diagnosed(resnet_layers(alpha=1.0))[3]["scale-residual-branch"]
    assert "sqrt(1 + chi_B) = 1.41" in residual.detail


def test_the_snippets_fit_the_model_at_hand():
    layers = mlp_layers(blocks=40, decades=-25.0, chi=0.06, saturated=0.3, parent="body")
    fixes = diagnosed(layers)[3]
    assert "old = model.body\n" in fixes["residual-connections"].snippet
    assert "wrap = {i: 2 for i in range(0, 80, 2)}" in fixes["residual-connections"].snippet
    assert 'paths = [f"body.{i}" for i in range(0, 80)]' in fixes["change-activation"].snippet
    assert "SATURATING = (nn.Sigmoid,)" in fixes["change-activation"].snippet
    scaled = diagnosed(resnet_layers(blocks=24, alpha=1.0))[3]["scale-residual-branch"].snippet
    assert "scale = 1 / 24 ** 0.5" in scaled
    assert 'paths = [f"blocks.{i}.fc2" for i in range(0, 24)]' in scaled


def test_a_fix_both_a_core_and_the_stack_call_for_is_given_once_with_both_reasons():
    cores = [core("custom", -0.675, name="cell"), core("rnn_tanh", 0.158, name="decoder")]
    layers = mlp_layers(decades=-30.7, chi=0.0557)
    _, _, _, fixes = diagnosed(layers, cores)
    skip = fixes["residual-connections"]
    assert "model.cell = ResidualCell(model.cell)" in skip.snippet
    assert "wrap = {i: 2 for i in range(0, 100, 2)}" in skip.snippet
    assert "cell (custom)" in skip.detail and "depth (50 blocks)" in skip.detail
    _, _, _, fixes = diagnosed(resnet_layers(alpha=1.0), cores[1:])
    clip = fixes["clip-grad-norm"]
    assert clip.snippet.count("clip_grad_norm_") == 1
    assert "decoder (rnn_tanh)" in clip.detail and "depth (50 blocks)" in clip.detail


# --- every snippet, run on a small model ---------------------------------------------------------


def run(fix: Fix, model: nn.Module, **replace: str) -> nn.Module:
    """Execute a fix's snippet with ``model`` bound, as a user would paste it; the new model."""
    snippet = fix.snippet
    for old, new in replace.items():
        assert old in snippet
        snippet = snippet.replace(old, new)
    namespace = {"torch": torch, "nn": nn, "model": model}
    exec(snippet, namespace)
    return namespace["model"]


def block(name: str, modules: list[str], size: int = 8, **fields) -> DepthLayer:
    """A measured block of ``modules`` that keeps its ``size``, losing part of the gradient."""
    defaults = dict(
        name=name,
        type="Linear",
        modules=modules,
        input_size=size,
        output_size=size,
        grad_norm=1.0,
        gain=0.2,
        chi=0.04,
        sigma_max=0.5,
    )
    return DepthLayer(**(defaults | fields))


def sequential_layers(model: nn.Sequential, parent: str = "") -> list[DepthLayer]:
    """The depth view of a Sequential of (module, activation?) pairs: each module with the
    activation that follows it, as the measurement groups them."""
    prefix = f"{parent}." if parent else ""
    children = list(model)
    layers, index = [], 0
    while index < len(children):
        indices = [index]
        if index + 1 < len(children) and not isinstance(children[index + 1], nn.Linear):
            indices.append(index + 1)
        linear, last = children[index], children[indices[-1]]
        layers.append(
            DepthLayer(
                name="+".join(f"{prefix}{i}" for i in indices),
                type="+".join(type(children[i]).__name__ for i in indices),
                modules=[f"{prefix}{i}" for i in indices],
                input_size=linear.in_features,
                output_size=linear.out_features,
                grad_norm=1.0,
                gain=0.2,
                chi=0.04,
                sigma_max=0.5,
                saturated=0.3 if isinstance(last, nn.Sigmoid) else None,
                activation=type(last).__name__ if last is not linear else None,
                parent=parent,
                indices=indices,
            )
        )
        index = indices[-1] + 1
    return layers


def sigmoid_mlp(blocks: int = 6, width: int = 8) -> nn.Sequential:
    """Linear(4, width), Sigmoid, ``blocks`` x (Linear(width, width), Sigmoid), Linear(width, 2)."""
    torch.manual_seed(0)
    hidden = [module for _ in range(blocks) for module in (nn.Linear(width, width), nn.Sigmoid())]
    return nn.Sequential(nn.Linear(4, width), nn.Sigmoid(), *hidden, nn.Linear(width, 2))


def vanishing(layers: list[DepthLayer], blocks_lost: float = 1.0) -> dict[str, Fix]:
    """The fixes for ``layers`` as a vanishing stack (each block loses ``blocks_lost`` decades)."""
    stack = depth_stack(layers, input_grad_norm=10 ** (-blocks_lost * len(layers)))
    return {fix.id: fix for fix in judge([], EPSILON, stack, layers)[4]}


def test_the_residual_snippet_rebuilds_a_sequential_around_shape_keeping_pairs():
    model = sigmoid_mlp()
    layers = sequential_layers(model)
    fix = vanishing(layers)["residual-connections"]
    x = torch.randn(5, 4)
    branches = [copy.deepcopy(model[i : i + 2]) for i in range(2, 14, 2)]
    new = run(fix, model)
    assert isinstance(new, nn.Sequential)
    kinds = [type(module).__name__ for module in new]
    assert kinds == ["Linear", "Sigmoid", *["Residual"] * 6, "Linear"]
    h = torch.sigmoid(new[0](x))
    assert torch.allclose(new[2](h), h + branches[0](h))
    assert new(x).shape == (5, 2)


def test_the_residual_snippet_rebuilds_a_nested_sequential_in_place():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = sigmoid_mlp()

        def forward(self, x):
            return self.body(x)

    model = Net()
    fix = vanishing(sequential_layers(model.body, parent="body"))["residual-connections"]
    new = run(fix, model)
    assert new is model and sum(type(m).__name__ == "Residual" for m in model.body) == 6
    assert model(torch.randn(3, 4)).shape == (3, 2)


def test_the_residual_snippet_wraps_one_module_blocks_by_path():
    class Loop(nn.Module):
        """Linear layers in a ModuleList, the activation in forward()."""

        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(5))

        def forward(self, x):
            for layer in self.layers:
                x = torch.tanh(layer(x))
            return x

    model = Loop()
    layers = [block(f"layers.{i}", [f"layers.{i}"], parent="layers", indices=[i]) for i in range(5)]
    fix = vanishing(layers)["residual-connections"]
    assert "model.set_submodule(path, Residual(model.get_submodule(path)))" in fix.snippet
    linear = copy.deepcopy(model.layers[0])
    run(fix, model)
    assert isinstance(model.layers, nn.ModuleList)
    assert all(type(layer).__name__ == "Residual" for layer in model.layers)
    x = torch.randn(3, 8)
    assert torch.allclose(model.layers[0](x), x + linear(x))
    assert model(x).shape == (3, 8)


def test_the_change_activation_snippet_swaps_sigmoids_for_relus_with_he_init():
    width = 64
    model = sigmoid_mlp(blocks=4, width=width)
    model.append(nn.Sigmoid())  # a probability head: Linear(64, 2) + Sigmoid
    layers = sequential_layers(model)
    fix = vanishing(layers)["change-activation"]
    assert "# 10+11 keeps its Sigmoid: it shapes the output" in fix.snippet
    run(fix, model)
    kinds = [type(module).__name__ for module in model]
    assert kinds == [*["Linear", "ReLU"] * 5, "Linear", "Sigmoid"]
    for linear in list(model)[2:10:2]:
        assert linear.weight.std().item() == pytest.approx(math.sqrt(2 / width), rel=0.1)
        assert linear.bias.abs().max().item() == 0
    assert model(torch.randn(3, 4)).shape == (3, 2)


def test_the_change_activation_snippet_reaches_into_container_blocks_and_spares_bias_none():
    blocks = [nn.Sequential(nn.Linear(8, 8, bias=False), nn.Tanh()) for _ in range(4)]
    model = nn.Sequential(*blocks)
    layers = [block(str(i), [str(i)], type="Sequential", activation="Tanh") for i in range(4)]
    fix = vanishing(layers)["change-activation"]
    assert "SATURATING = (nn.Tanh,)" in fix.snippet
    run(fix, model)
    assert all(isinstance(block[1], nn.ReLU) for block in model)
    assert model(torch.randn(2, 8)).shape == (2, 8)


@pytest.mark.parametrize(
    ("activation", "nonlinearity"),
    [(nn.ReLU, "relu"), (None, "linear"), (nn.Sigmoid, "relu")],
)
def test_the_init_gain_snippet_reinitialises_with_the_right_gain(activation, nonlinearity):
    width = 128
    modules = []
    for _ in range(5):
        modules.append(nn.Linear(width, width))
        if activation is not None:
            modules.append(activation())
    model = nn.Sequential(*modules)
    layers = sequential_layers(model)
    fix = vanishing(layers)["init-gain"]
    assert f'nonlinearity="{nonlinearity}"' in fix.snippet
    run(fix, model)
    gain = nn.init.calculate_gain(nonlinearity)
    for linear in (m for m in model if isinstance(m, nn.Linear)):
        assert linear.weight.std().item() == pytest.approx(gain / math.sqrt(width), rel=0.05)
        assert linear.bias.abs().max().item() == 0


def test_the_orthogonal_snippet_makes_each_weight_a_scaled_isometry():
    width = 16
    model = nn.Sequential(*[m for _ in range(5) for m in (nn.Linear(width, width), nn.ReLU())])
    layers = [dataclasses.replace(x, chi=0.6) for x in sequential_layers(model)]
    fix = vanishing(layers)["orthogonal-init"]
    run(fix, model)
    for linear in (m for m in model if isinstance(m, nn.Linear)):
        weight = linear.weight.detach()
        assert torch.allclose(weight @ weight.T, 2 * torch.eye(width), atol=1e-5)


def test_the_normalization_snippet_puts_a_norm_between_each_layer_and_its_activation():
    model = sigmoid_mlp(blocks=3)
    layers = sequential_layers(model)
    layers[0] = dataclasses.replace(layers[0], saturated=0.0)  # the first block is fine
    fix = vanishing(layers)["normalization"]
    run(fix, model)
    assert isinstance(model[0], nn.Linear)
    for index in (2, 4, 6):
        assert isinstance(model[index], nn.Sequential)
        assert [type(m).__name__ for m in model[index]] == ["Linear", "LayerNorm"]
        assert model[index][1].normalized_shape == (8,)
    assert model(torch.randn(3, 4)).shape == (3, 2)


def test_the_normalization_snippet_gives_a_conv_its_batchnorm():
    model = nn.Sequential(
        *[m for _ in range(4) for m in (nn.Conv2d(3, 3, 3, padding=1), nn.Tanh())]
    )
    layers = [
        block(
            f"{2 * i}+{2 * i + 1}",
            [str(2 * i), str(2 * i + 1)],
            size=48,
            type="Conv2d+Tanh",
            saturated=0.4,
            activation="Tanh",
            parent="",
            indices=[2 * i, 2 * i + 1],
        )
        for i in range(4)
    ]
    fix = vanishing(layers)["normalization"]
    run(fix, model)
    assert all(isinstance(model[2 * i][1], nn.BatchNorm2d) for i in range(4))
    assert model(torch.randn(2, 3, 4, 4)).shape == (2, 3, 4, 4)


class Block(nn.Module):
    """``x + fc2(relu(fc1(x)))``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))


@pytest.mark.parametrize("zero_init", [False, True])
def test_the_scale_branch_snippet_scales_or_zeroes_each_branch_end(zero_init):
    model = nn.Sequential()
    model.add_module("blocks", nn.Sequential(*[Block(8) for _ in range(6)]))
    before = copy.deepcopy(model)
    layers = resnet_layers(blocks=6, alpha=1.0, width=8)
    stack = depth_stack(layers, input_grad_norm=1e4)
    (fix,) = [f for f in judge([], EPSILON, stack, layers)[4] if f.id == "scale-residual-branch"]
    run(fix, model, **({"zero_init = False": "zero_init = True"} if zero_init else {}))
    for new, old in zip(model.blocks, before.blocks, strict=True):
        factor = 0.0 if zero_init else 1 / math.sqrt(6)
        assert torch.allclose(new.fc2.weight, factor * old.fc2.weight)
        assert torch.allclose(new.fc2.bias, factor * old.fc2.bias)
        assert torch.equal(new.fc1.weight, old.fc1.weight)
    x = torch.randn(3, 8)
    if zero_init:
        assert torch.equal(model(x), x)


def test_the_clip_snippet_runs_in_a_training_step():
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = (1e6 * model(torch.randn(8, 4))).pow(2).mean()
    fix = diagnosed(resnet_layers(alpha=1.0))[3]["clip-grad-norm"]
    namespace = {"torch": torch, "model": model, "optimizer": optimizer, "loss": loss}
    exec(fix.snippet, namespace)
    assert model.weight.grad.norm() <= 1.0 + 1e-6


# --- with the measurement: the depth view of real models, diagnosed, fixed, measured again ----


def measured(model: nn.Module, **options) -> tuple[DepthStack, list[DepthLayer]]:
    report = gradscope.analyze(model, dtype="float64", **options)
    assert report.stack is not None
    return report.stack, report.layers


def test_the_fixes_for_a_measured_sigmoid_mlp_run_and_cure_it():
    torch.manual_seed(0)
    width, blocks = 32, 16
    modules = []
    for _ in range(blocks):
        linear = nn.Linear(width, width)
        nn.init.xavier_normal_(linear.weight)
        nn.init.zeros_(linear.bias)
        modules += [linear, nn.Sigmoid()]
    model = nn.Sequential(*modules).double()
    stack, layers = measured(model)
    status, _, assessed, (finding,), fixes = judge([], EPSILON, stack, layers)
    assert status == assessed.status == "vanishing"
    assert finding.fixes[:3] == ["residual-connections", "change-activation", "init-gain"]
    by_id = {fix.id: fix for fix in fixes}
    rebuilt = run(by_id["residual-connections"], copy.deepcopy(model))
    assert sum(type(m).__name__ == "Residual" for m in rebuilt) == blocks
    assert assess_depth(*measured(rebuilt), EPSILON).status == "healthy"
    switched = run(by_id["change-activation"], copy.deepcopy(model))
    assert not any(isinstance(m, nn.Sigmoid) for m in switched.modules())
    assert assess_depth(*measured(switched), EPSILON).status == "healthy"


def test_the_branch_scaling_for_a_measured_residual_stack_runs_and_cures_it():
    torch.manual_seed(0)
    width, blocks = 32, 30
    model = nn.Sequential(*[Block(width) for _ in range(blocks)]).double()
    for block in model:
        nn.init.normal_(block.fc1.weight, 0.0, math.sqrt(2 / width))
        nn.init.normal_(block.fc2.weight, 0.0, math.sqrt(1 / width))
        nn.init.zeros_(block.fc1.bias)
        nn.init.zeros_(block.fc2.bias)
    stack, layers = measured(model)
    assert [layer.branch_last for layer in layers[:2]] == ["0.fc2", "1.fc2"]
    status, _, _, (finding,), fixes = judge([], EPSILON, stack, layers)
    assert status == "exploding"
    assert finding.fixes == ["scale-residual-branch", "clip-grad-norm"]
    scaled = run(fixes[0], model)
    assert assess_depth(*measured(scaled), EPSILON).status == "healthy"
