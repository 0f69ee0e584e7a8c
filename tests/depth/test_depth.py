"""The depth view against known answers (docs/oracles.md, feed-forward rows) and brute-force twins.

Every chi and sigma_max estimate is compared with the full Jacobian of the same block, taken by
``torch.autograd.functional.jacobian`` one example at a time.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

import gradscope
from gradscope.depth.blocks import blocks_of, recording, units
from gradscope.depth.gains import block_gains, jacobian_sigma_max
from gradscope.errors import GradscopeError

WIDTH = 512
DEPTH = 50


def mlp(activation, init, depth=DEPTH, width=WIDTH, seed=0) -> nn.Sequential:
    """``depth`` (Linear, activation) pairs, zero bias, float64."""
    torch.manual_seed(seed)
    layers = []
    for _ in range(depth):
        linear = nn.Linear(width, width)
        init(linear.weight)
        nn.init.zeros_(linear.bias)
        layers += [linear, activation()]
    return nn.Sequential(*layers).double()


def he(weight):
    nn.init.kaiming_normal_(weight, nonlinearity="relu")


class Residual(nn.Module):
    """``x + alpha W2 relu(W1 x)``, W1 ~ N(0, 2/N), W2 ~ N(0, 1/N) (docs/oracles.md)."""

    def __init__(self, width: int, alpha: float) -> None:
        super().__init__()
        self.alpha = alpha
        self.inner = nn.Linear(width, width, bias=False)
        self.outer = nn.Linear(width, width, bias=False)
        nn.init.normal_(self.inner.weight, 0.0, math.sqrt(2 / width))
        nn.init.normal_(self.outer.weight, 0.0, math.sqrt(1 / width))

    def forward(self, x):
        return x + self.alpha * self.outer(torch.relu(self.inner(x)))


def residual_stack(alpha: float, depth=DEPTH, width=WIDTH, seed=0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(*[Residual(width, alpha) for _ in range(depth)]).double()


# --- docs/oracles.md, feed-forward rows -----------------------------------------------------


def test_deep_sigmoid_mlp_with_xavier_init_vanishes():
    report = gradscope.analyze(mlp(nn.Sigmoid, nn.init.xavier_normal_))

    stack, layers = report.stack, report.layers
    assert stack.blocks == DEPTH and layers[0].type == "Linear+Sigmoid"
    assert stack.gain_per_block == pytest.approx(0.236, abs=0.01)
    assert stack.decades == pytest.approx(-30.7, abs=1.0)
    assert sorted(layer.chi for layer in layers)[DEPTH // 2] == pytest.approx(0.0557, abs=0.003)
    assert report.status == "vanishing"


def test_deep_relu_mlp_with_he_init_is_healthy():
    report = gradscope.analyze(mlp(nn.ReLU, he))

    assert abs(report.stack.decades) < 0.5
    assert sorted(layer.chi for layer in report.layers)[DEPTH // 2] == pytest.approx(1, abs=0.05)
    assert report.status == "healthy"


@pytest.mark.parametrize(
    ("alpha", "decades", "status"),
    [(1.0, 7.5, "exploding"), (1 / math.sqrt(DEPTH), 0.2, "healthy")],
    ids=["alpha-1", "alpha-1-over-sqrt-depth"],
)
def test_residual_blocks_grow_by_sqrt_one_plus_alpha_squared(alpha, decades, status):
    report = gradscope.analyze(residual_stack(alpha))

    stack = report.stack
    assert stack.gain_per_block == pytest.approx(math.sqrt(1 + alpha**2), rel=0.02)
    assert stack.decades == pytest.approx(decades, abs=0.3)
    assert stack.residual_blocks == DEPTH
    branch = sorted(layer.branch_chi for layer in report.layers)[DEPTH // 2]
    assert branch == pytest.approx(alpha**2, rel=0.1)
    assert report.status == status


# --- brute-force twins on small blocks ----------------------------------------------------------


def full_jacobians(function, x):
    """Per-example Jacobians (B, n_out, n_in) by autograd, one example at a time."""
    return torch.stack([jacobian(lambda row: function(row[None])[0], row) for row in x])


SMALL_BLOCKS = {
    "linear-tanh": lambda: nn.Sequential(nn.Linear(6, 4), nn.Tanh()),
    "wide-linear": lambda: nn.Linear(3, 9),
    "layer-norm-gelu": lambda: nn.Sequential(nn.Linear(5, 5), nn.LayerNorm(5), nn.GELU()),
    "residual": lambda: Residual(6, 0.7),
}


@pytest.mark.parametrize("kind", SMALL_BLOCKS)
def test_chi_and_sigma_max_match_the_full_jacobian(kind):
    torch.manual_seed(1)
    block = SMALL_BLOCKS[kind]().double()
    x = torch.randn(7, _in(block), dtype=torch.float64)
    full = full_jacobians(block, x)
    chi = full.pow(2).sum(dim=(1, 2)).mean() / full.shape[1]
    sigma = torch.linalg.matrix_norm(full, ord=2).max()

    (gains,) = block_gains([block], [x], 4000, 60, torch.Generator().manual_seed(0))

    assert gains.chi == pytest.approx(float(chi), rel=0.03)  # Hutchinson, 4000 probes
    assert gains.sigma_max == pytest.approx(float(sigma), rel=1e-6)  # power iteration converged
    single = jacobian_sigma_max(block, x, 60, torch.Generator().manual_seed(0))
    assert single == pytest.approx(float(sigma), rel=1e-6)


def _in(block: nn.Module) -> int:
    first = next(m for m in block.modules() if isinstance(m, nn.Linear))
    return first.in_features


def test_the_identity_path_is_found_and_the_branch_gain_is_the_jacobian_minus_i():
    torch.manual_seed(2)
    block = Residual(6, 0.7).double()
    plain = nn.Sequential(nn.Linear(6, 6), nn.ReLU()).double()
    x = torch.randn(9, 6, dtype=torch.float64)
    branch = full_jacobians(block, x) - torch.eye(6, dtype=torch.float64)
    expected = branch.pow(2).sum(dim=(1, 2)).mean() / 6

    residual, other = block_gains([block, plain], [x, x], 4000, 5, torch.Generator().manual_seed(0))

    assert residual.residual and not other.residual
    assert residual.branch_chi == pytest.approx(float(expected), rel=0.05)


def test_few_probes_estimate_chi_of_a_wide_batch_well():
    """Hutchinson over a batch of wide examples: the default two probes are within a few %."""
    torch.manual_seed(3)
    block = nn.Sequential(nn.Linear(256, 256), nn.Tanh()).double()
    x = torch.randn(32, 256, dtype=torch.float64)
    exact = full_jacobians(block, x[:8]).pow(2).sum(dim=(1, 2)).mean() / 256
    (gains,) = block_gains([block], [x[:8]], 2, 1, torch.Generator().manual_seed(0))
    assert gains.chi == pytest.approx(float(exact), rel=0.05)


# --- the gradient at every block --------------------------------------------------------------


def test_block_gradients_equal_autograd_at_each_output():
    model = mlp(nn.Tanh, nn.init.xavier_normal_, depth=6, width=10, seed=4)
    report = gradscope.analyze(model, batch=5, seed=7)

    x = torch.randn(5, 10, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    x.requires_grad_(True)
    activations, h = [], x
    for i in range(0, 12, 2):
        h = model[i + 1](model[i](h))
        h.retain_grad()
        activations.append(h)
    w = torch.randn(10, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    (h @ (w / w.norm())).sum().backward()

    def pooled(g):
        return float(g.pow(2).sum(-1).mean().sqrt())

    assert [layer.grad_norm for layer in report.layers] == pytest.approx(
        [pooled(a.grad) for a in activations], rel=1e-10
    )
    assert report.stack.input_grad_norm == pytest.approx(pooled(x.grad), rel=1e-10)
    gains = [layer.gain for layer in report.layers]
    assert gains[1] == pytest.approx(pooled(activations[0].grad) / pooled(activations[1].grad))


# --- blocks, granularity, saturation, dead units -----------------------------------------------


class Net(nn.Module):
    """A stem, a container of custom blocks, a shared activation, and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 8)
        self.act = nn.ReLU()
        self.blocks = nn.ModuleList([Residual(8, 0.5) for _ in range(3)])
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x = self.act(self.stem(x))
        for block in self.blocks:
            x = self.act(block(x))
        return self.head(x)


def test_blocks_follow_execution_and_join_activations():
    model = Net().double()
    with recording(model, "blocks") as calls:
        model(torch.randn(2, 4, dtype=torch.float64))
    names = [block.name for block in blocks_of(calls)]
    assert names == ["stem+act", "blocks.0+act", "blocks.1+act", "blocks.2+act", "head"]
    leaves = [name for name, _ in units(model, "leaves")]
    assert "blocks.0.inner" in leaves and "blocks" not in leaves
    assert [name for name, _ in units(model, "1")][:2] == ["stem", "act"]


def test_sequential_blocks_know_their_parent_and_indices():
    model = nn.Sequential(nn.Linear(3, 3), nn.Sigmoid(), nn.Linear(3, 3), nn.Sigmoid())
    report = gradscope.analyze(nn.Sequential(nn.Linear(3, 3), model, nn.Linear(3, 1)))
    inner = [layer for layer in report.layers if layer.parent == "1"]
    assert [layer.indices for layer in inner] == [[0, 1], [2, 3]]
    assert inner[0].activation == "Sigmoid"


def test_saturated_sigmoids_and_dead_relus_are_counted():
    torch.manual_seed(5)
    saturating = nn.Sequential(*[m for _ in range(3) for m in (nn.Linear(16, 16), nn.Sigmoid())])
    with torch.no_grad():
        for m in saturating:
            if isinstance(m, nn.Linear):
                m.weight.mul_(40)
    dead = nn.Sequential(*[m for _ in range(3) for m in (nn.Linear(16, 16), nn.ReLU())])
    with torch.no_grad():
        dead[2].bias.fill_(-100)  # the second ReLU never fires

    saturated = gradscope.analyze(saturating, batch=64).layers
    rectified = gradscope.analyze(dead, batch=64).layers

    assert all(layer.saturated > 0.5 for layer in saturated)
    assert rectified[1].dead == 1.0 and rectified[0].dead < 0.5


def test_a_cnn_needs_its_input_shape_and_runs_in_eval_mode():
    torch.manual_seed(6)
    cnn = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 10),
    )
    cnn[1].running_var.fill_(4.0)  # eval mode must use these running statistics
    with pytest.raises(GradscopeError, match=r"Conv2d, 3 input channels.*--input-shape"):
        gradscope.analyze(cnn)

    report = gradscope.analyze(cnn, input_shape=(4, 3, 8, 8))

    assert [layer.type for layer in report.layers][:2] == ["Conv2d+BatchNorm2d+ReLU"] * 2
    assert cnn.training  # the user's model is not touched


def test_a_wrong_input_shape_names_the_model_error():
    with pytest.raises(GradscopeError, match=r"forward failed.*--input-shape"):
        gradscope.analyze(mlp(nn.ReLU, he, depth=4, width=8), input_shape=(2, 9))


# --- what a review found: each a reproducer -----------------------------------------------------


class Scaled(nn.Module):
    """Work between modules: a multiplication, then a stand-alone in-place ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.l3(self.l2(self.act(self.l1(x) * 3)))


def test_an_in_place_activation_is_measured_on_the_input_it_saw():
    torch.manual_seed(11)
    model = Scaled().double()
    report = gradscope.analyze(model, batch=64)

    act = next(layer for layer in report.layers if layer.name == "act")
    assert act.chi == pytest.approx(0.5, abs=0.25)  # half the units pass, slope 1
    assert [layer.name for layer in report.layers] == ["l1", "act", "l2", "l3"]
    assert not report.layers[0].chained  # the * 3 is unseen work


def test_a_block_after_unseen_work_has_its_gain_from_the_gradient_at_its_own_input():
    torch.manual_seed(11)
    model = Scaled().double()
    model.act.inplace = False  # its input kept apart from its output
    x = torch.randn(64, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    report = gradscope.analyze(model, x)
    assert not report.layers[0].chained  # l1's output is not what act reads: the * 3 is
    # autograd on the real model, with gradscope's loss: the gradients at act's input (l1's
    # output times 3) and at its output
    from gradscope.probe import Probe
    from gradscope.probe.loss import loss_direction

    w = loss_direction(2, Probe(x, None, 0, "tensor", 0), x)
    pre = model.l1(x) * 3
    pre.retain_grad()
    out = model.act(pre)
    out.retain_grad()
    (model.l3(model.l2(out)) @ w).sum().backward()
    act = next(layer for layer in report.layers if layer.name == "act")
    expected = pre.grad.norm() / out.grad.norm()  # the batch's RMS cancels in the ratio
    assert act.gain == pytest.approx(float(expected), rel=1e-9)


def test_a_norm_or_activation_alone_is_not_a_residual_block():
    torch.manual_seed(7)
    model = nn.Sequential(nn.LayerNorm(16), nn.Dropout(0.1), *[nn.Linear(16, 16) for _ in range(4)])
    report = gradscope.analyze(model.double(), depth="leaves")

    assert report.stack.residual_blocks == 0


def test_functional_activations_are_said_and_he_init_is_prescribed():
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(64, 64) for _ in range(30))

        def forward(self, x):
            for layer in self.layers:
                x = torch.relu(layer(x))
            return x

    torch.manual_seed(8)
    report = gradscope.analyze(Functional().double())

    assert report.status == "vanishing"
    assert "does not see" in report.findings[0].message
    init = next(fix for fix in report.fixes if fix.id == "init-gain")
    assert 'nonlinearity="relu"' in init.snippet


def test_a_flatten_is_no_place_for_a_skip_and_the_cnn_snippet_runs():
    torch.manual_seed(9)
    layers = [m for _ in range(12) for m in (nn.Conv2d(4, 4, 3, padding=1), nn.Sigmoid())]
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), *layers, nn.Flatten(), nn.Linear(64, 3))
    report = gradscope.analyze(model.double(), input_shape=(4, 2, 4, 4))
    flatten = next(layer for layer in report.layers if layer.type == "Flatten")
    assert flatten.same_shape is False

    fix = next(fix for fix in report.fixes if fix.id == "residual-connections")
    namespace = {"nn": nn, "torch": torch, "model": model}
    exec(fix.snippet, namespace)  # a root Sequential is rebuilt: read the new model back
    model = namespace["model"]
    assert model(torch.randn(4, 2, 4, 4, dtype=torch.float64)).shape == (4, 3)
    assert sum(type(m).__name__ == "Residual" for m in model.modules()) == 12


def test_a_transformer_encoder_is_opened_into_its_layers():
    torch.manual_seed(10)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    model = nn.Sequential(nn.Linear(8, 16), nn.TransformerEncoder(layer, 3), nn.Linear(16, 4))
    report = gradscope.analyze(model.double(), input_shape=(2, 5, 8))

    names = [layer.name for layer in report.layers]
    assert names == ["0", "1.layers.0", "1.layers.1", "1.layers.2", "2"]
    assert report.stack.residual_blocks == 3


def test_a_depth_only_report_has_no_time_settings(capsys):
    import json

    from gradscope.cli import main

    path = __import__("pathlib").Path(__import__("tempfile").mkdtemp()) / "mlp.pt"
    torch.save(mlp(nn.ReLU, he, depth=4, width=8), path)
    main(["analyze", str(path), "-f", "json", "--exit-zero"])

    settings = json.loads(capsys.readouterr().out)["settings"]
    assert settings["steps"] is None and settings["horizon"] is None
    assert settings["loss"] == "seeded unit projection of the output"
