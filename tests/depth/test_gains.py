"""The depth view's cheaper JVPs, chi's standard error, projection shortcuts and attention's sigma
max, each against a brute-force twin or a known answer (docs/oracles.md, depth rows)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.functional import jacobian
from torch.func import jvp, vmap
from torch.nn.utils.parametrizations import weight_norm

import gradscope
from gradscope.depth.blocks import blocks_of, find_shortcut, recording, split_function
from gradscope.depth.forward_mode import BlockPushes
from gradscope.depth.gains import block_gains, whole_gains
from gradscope.depth.measure import measure_depth
from gradscope.options import AnalysisOptions
from gradscope.probe import make_probe, projected_output

from tests.helpers import depth_samples
from tests.helpers.depth_blocks import Down, Gated, TwoPaths, Widen, downsampling_net
from tests.helpers.rendering import rendered


def flat_jacobian(function, x):
    """The Jacobian of ``function`` at ``x`` as a matrix (n_out, n_in), by autograd."""
    matrix = jacobian(lambda v: function(v.reshape(x.shape)).reshape(-1), x.reshape(-1))
    return matrix.reshape(-1, x.numel())


# --- JVPs through linear layers, convolutions and batch norm ----------------------------------


class Hyper(nn.Module):
    """A convolution whose weight is computed from the stream: a weight tangent that is not 0."""

    def __init__(self) -> None:
        super().__init__()
        self.base = nn.Parameter(torch.randn(3, 3, 3, 3))
        self.bias = nn.Parameter(torch.randn(3))

    def forward(self, x):
        scale = x.mean()
        return F.conv2d(x, self.base * scale, bias=self.bias * scale, padding=1)


def _norm(channels: int, affine: bool = True) -> nn.Module:
    norm = nn.BatchNorm2d(channels, affine=affine)
    with torch.no_grad():
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
    return norm


LAYERS = {
    "linear": (lambda: nn.Linear(6, 5), (4, 6)),
    "linear-no-bias-3d": (lambda: nn.Linear(6, 5, bias=False), (2, 3, 6)),
    "conv1d-dilated": (lambda: nn.Conv1d(3, 4, 3, dilation=2, padding=2), (2, 3, 9)),
    "conv2d-strided-groups": (lambda: nn.Conv2d(4, 6, 3, stride=2, groups=2), (2, 4, 7, 7)),
    "conv2d-same-reflect": (
        lambda: nn.Conv2d(3, 3, 3, padding="same", padding_mode="reflect"),
        (2, 3, 5, 5),
    ),
    "conv3d": (lambda: nn.Conv3d(2, 3, 2), (1, 2, 4, 4, 4)),
    "conv-transpose2d": (
        lambda: nn.ConvTranspose2d(3, 2, 3, stride=2, output_padding=1),
        (2, 3, 4, 4),
    ),
    "weight-norm-conv": (lambda: weight_norm(nn.Conv1d(3, 3, 3)), (2, 3, 8)),
    "batch-norm-eval": (lambda: nn.Sequential(nn.Conv2d(3, 3, 1), _norm(3)), (4, 3, 3, 3)),
    "batch-norm-no-affine": (lambda: _norm(3, affine=False), (4, 3, 3, 3)),
    "batch-norm-batch-statistics": (lambda: nn.BatchNorm1d(5, track_running_stats=False), (6, 5)),
    "hyper-conv": (Hyper, (2, 3, 4, 4)),
}


@pytest.mark.parametrize("kind", LAYERS)
def test_the_fast_rules_give_the_jvp_and_the_full_jacobian(kind):
    torch.manual_seed(0)
    build, shape = LAYERS[kind]
    layer = build().double().eval()
    x = torch.randn(shape, dtype=torch.float64)
    tangents = [torch.randn(shape, dtype=torch.float64) for _ in range(3)]
    full = flat_jacobian(layer, x)
    pushes = BlockPushes([layer], [x])

    for v in tangents:  # the second and third push use the outputs kept from the first
        (fast,) = pushes((v,))
        plain = jvp(layer, (x,), (v,))[1]
        assert torch.allclose(fast, plain, rtol=1e-12, atol=1e-12)
        assert torch.allclose(fast.reshape(-1), full @ v.reshape(-1), rtol=1e-10, atol=1e-12)
    assert pushes.method(0) == "jvp"


def test_a_weight_changed_in_place_is_not_read_from_an_earlier_push():
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 3, 3, padding=1).double()
    x, v = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 3, 4, 4).double()
    pushes = BlockPushes([lambda t: torch.relu(conv(t))], [x])
    pushes((v,))
    with torch.no_grad():
        conv.weight.mul_(-2)

    (after,) = pushes((v,))

    assert torch.allclose(after, jvp(lambda t: torch.relu(conv(t)), (x,), (v,))[1], rtol=1e-12)


def test_the_whole_models_gains_on_the_probe_runs_graph_equal_a_fresh_forward():
    """The stack's sigma max and RMS singular value, their VJPs taken on the probe run's graph,
    equal the same estimator on a fresh forward pass, and sigma max the dense one after enough
    iterations."""
    torch.manual_seed(9)
    model = nn.Sequential(*[m for _ in range(4) for m in (nn.Linear(6, 6), nn.Tanh())]).double()
    options = AnalysisOptions(batch=1, power_iterations=150)
    probe = make_probe(model, options, torch.device("cpu"))
    with torch.enable_grad():
        found = measure_depth(model, probe, options)

    def whole(x):
        return projected_output(probe.call(model, x), probe, traced=False)

    x = probe.inputs.detach()
    fresh = whole_gains(whole, x, 1, 150, torch.Generator().manual_seed(options.seed + 3))
    assert found.stack.rms_singular_value == pytest.approx(fresh.rms, rel=1e-12)
    assert found.stack.sigma_max == pytest.approx(fresh.sigma_max, rel=1e-10)
    dense = float(torch.linalg.svdvals(flat_jacobian(whole, x))[0])
    assert found.stack.sigma_max == pytest.approx(dense, rel=1e-6)


def test_a_block_running_its_own_transform_falls_back_to_the_plain_jvp():
    """``vmap`` inside a block's forward: the rules cannot follow it, the plain JVP can."""
    torch.manual_seed(10)
    linear = nn.Linear(4, 4).double()
    q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    with torch.no_grad():  # singular values well apart: power iteration converges quickly
        linear.weight.copy_(q @ torch.diag(torch.tensor([2.0, 1.0, 0.5, 0.25]).double()) @ q.T)

    def block(x):
        return torch.tanh(vmap(linear)(x))

    x = 0.3 * torch.randn(1, 4, dtype=torch.float64)
    dense = float(torch.linalg.svdvals(flat_jacobian(block, x))[0])

    (gains,) = block_gains([block], [x], 2, 200, torch.Generator().manual_seed(0))

    assert gains.sigma_max == pytest.approx(dense, rel=1e-6)
    assert gains.sigma_max_method == "jvp"
    pushes = BlockPushes([block], [x])
    pushes((torch.ones_like(x),))
    assert not pushes.fast  # the rules were left off


# --- chi's standard error -----------------------------------------------------------------------


def test_chis_standard_error_is_the_analytic_one_for_a_linear_block():
    """For ``y = A x`` on a batch of B examples, each probe's estimate is ``sum_b ||A^T u_b||^2 /
    (B n)``: mean ``||A||_F^2 / n``, variance ``2 ||A A^T||_F^2 / (B n^2)`` (u Gaussian)."""
    torch.manual_seed(2)
    n_in, n_out, batch, probes = 5, 6, 16, 400
    linear = nn.Linear(n_in, n_out, bias=False).double()
    a = linear.weight.detach()
    x = torch.randn(batch, n_in, dtype=torch.float64)
    chi = float(a.pow(2).sum()) / n_out
    spread = math.sqrt(2 * float((a @ a.T).pow(2).sum()) / (batch * n_out**2))
    expected = spread / math.sqrt(probes) / chi

    (gains,) = block_gains([linear], [x], probes, 1, torch.Generator().manual_seed(0))

    assert gains.chi == pytest.approx(chi, rel=4 * expected)
    assert gains.chi_rel_stderr == pytest.approx(expected, rel=0.15)
    (one,) = block_gains([linear], [x], 1, 1, torch.Generator().manual_seed(0))
    assert one.chi_rel_stderr is None  # no spread from a single probe


def test_chis_standard_error_matches_the_spread_over_seeds():
    """A tanh layer with four probes, 300 seeds: the RMS of the reported standard errors equals
    the standard deviation of the chi estimates themselves."""
    torch.manual_seed(3)
    block = nn.Sequential(nn.Linear(12, 10), nn.Tanh()).double()
    x = torch.randn(3, 12, dtype=torch.float64)
    runs = [
        block_gains([block], [x], 4, 1, torch.Generator().manual_seed(s))[0] for s in range(300)
    ]
    chis = torch.tensor([g.chi for g in runs], dtype=torch.float64)
    reported = torch.tensor([g.chi_rel_stderr * g.chi for g in runs], dtype=torch.float64)

    assert float(reported.pow(2).mean().sqrt()) == pytest.approx(float(chis.std()), rel=0.15)


def test_the_standard_error_is_reported_for_every_block():
    torch.manual_seed(4)
    model = nn.Sequential(*[m for _ in range(4) for m in (nn.Linear(16, 16), nn.Tanh())]).double()
    report = gradscope.analyze(model, batch=8)

    assert all(0 < layer.chi_rel_stderr < 0.5 for layer in report.layers)
    assert "chi_rel_stderr" in report.to_dict()["layers"][0]


# --- residual blocks with a projection shortcut -----------------------------------------------


def _blocks(model, x):
    with recording(model, "blocks") as calls:
        output = model(x.clone().requires_grad_(True))
    return blocks_of(calls, output)


def test_a_downsampling_block_is_residual_through_its_projection_shortcut():
    model = downsampling_net()
    report = gradscope.analyze(model, input_shape=(4, 3, 8, 8))

    layers = {layer.name: layer for layer in report.layers}
    down, widen = layers["1"], layers["3"]
    assert down.residual and down.shortcut == "1.downsample" and not down.same_shape
    assert down.branch_last == "1.bn2"  # the branch ends at bn2, not in the shortcut
    assert not widen.residual and widen.shortcut is None and widen.branch_chi is None
    assert layers["2"].residual and layers["2"].shortcut is None  # the identity skip
    assert report.stack.residual_blocks == 2


def test_the_shortcut_path_takes_the_identitys_place_in_the_branch_gain():
    """Twin: the Jacobians of the block's two paths written out by hand (``Down.paths``), the
    skip path ``P`` with the branch's input held, and ``J = P + B``."""
    torch.manual_seed(5)
    block = Down(4, 8).double().eval()
    x = torch.rand(3, 4, 6, 6, dtype=torch.float64)  # after a ReLU, as in a ResNet
    per_example = []
    for row in x:
        row = row[None]
        total = flat_jacobian(block, row)
        path = flat_jacobian(lambda s, row=row: block.paths(row, s), row)
        per_example.append((total, path))
    align = sum(float((j * p).sum()) for j, p in per_example) / sum(
        float(p.pow(2).sum()) for _, p in per_example
    )
    n_out = per_example[0][0].shape[0]
    branch = sum(float((j - p).pow(2).sum()) for j, p in per_example) / (len(x) * n_out)
    chi = sum(float(j.pow(2).sum()) for j, _ in per_example) / (len(x) * n_out)

    (found,) = _blocks(nn.Sequential(block), x)
    shortcut = find_shortcut(found)
    split = split_function(found, shortcut)
    assert torch.equal(split(x, x), block(x.clone()))  # equal to the block at (x, x)
    (gains,) = block_gains(
        [found.function()], [x], 3000, 5, torch.Generator().manual_seed(0), skips=[split]
    )
    (plain,) = block_gains([found.function()], [x], 3000, 5, torch.Generator().manual_seed(0))

    assert shortcut == "0.downsample"
    assert align > 0.5 and gains.residual and gains.shortcut
    assert gains.branch_chi == pytest.approx(branch, rel=0.05)
    assert gains.chi == pytest.approx(chi, rel=0.05)
    # the two paths' VJPs add up to the block's: the same chi and power iteration as without
    assert gains.chi == pytest.approx(plain.chi, rel=1e-12)
    assert gains.sigma_max == pytest.approx(plain.sigma_max, rel=1e-10)
    assert not plain.residual  # the identity test cannot apply to a block that changes shape


@pytest.mark.parametrize("block", [Widen, Gated, TwoPaths], ids=["plain", "gated", "two-paths"])
def test_a_block_that_changes_shape_without_an_added_shortcut_has_none(block):
    torch.manual_seed(6)
    x = torch.rand(2, 4, 6, 6, dtype=torch.float64)
    (found,) = _blocks(nn.Sequential(block(4, 8).double().eval()), x)

    assert find_shortcut(found) is None
    (gains,) = block_gains([found.function()], [x], 2, 2, torch.Generator().manual_seed(0))
    assert not gains.residual and gains.branch_chi is None


# --- sigma max through attention -------------------------------------------------------------


def _expected_method(block, x) -> str:
    """``jvp-math-attention`` where the plain JVP fails (the fused attention kernel has no
    forward derivative in torch 2.13), else ``jvp``."""
    try:
        jvp(block, (x,), (torch.ones_like(x),))
    except NotImplementedError:
        return "jvp-math-attention"
    return "jvp"


def _encoder(norm_first: bool) -> nn.Sequential:
    torch.manual_seed(7)
    layer = nn.TransformerEncoderLayer(
        16, 2, 32, dropout=0.0, batch_first=True, norm_first=norm_first
    )
    encoder = nn.TransformerEncoder(layer, 3, enable_nested_tensor=False)
    return nn.Sequential(nn.Linear(8, 16), encoder, nn.Linear(16, 4)).double().eval()


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
def test_transformer_blocks_get_sigma_max_through_the_math_attention_backend(norm_first):
    """Every encoder layer's sigma max equals the largest singular value of its full Jacobian
    (d_model 16, 5 steps, batch 1), after enough power iterations."""
    model = _encoder(norm_first)
    x = torch.randn(1, 5, 8, dtype=torch.float64)
    blocks = _blocks(model, x)[1:4]
    functions, inputs = [b.function() for b in blocks], [b.value for b in blocks]
    dense = [
        float(torch.linalg.svdvals(flat_jacobian(f, v))[0])
        for f, v in zip(functions, inputs, strict=True)
    ]
    method = _expected_method(functions[0], inputs[0])

    gains = block_gains(functions, inputs, 2, 120, torch.Generator().manual_seed(0))

    assert [g.sigma_max for g in gains] == pytest.approx(dense, rel=1e-6)
    assert [g.sigma_max_method for g in gains] == [method] * 3
    report = gradscope.analyze(model, input_shape=(1, 5, 8))
    encoder = [layer for layer in report.layers if layer.name.startswith("1.layers")]
    assert len(encoder) == 3 and all(math.isfinite(layer.sigma_max) for layer in encoder)
    assert [layer.sigma_max_method for layer in encoder] == [method] * 3
    assert report.layers[0].sigma_max_method == "jvp"
    assert report.stack.sigma_max is not None and math.isfinite(report.stack.sigma_max)


class SelfAttention(nn.Module):
    """``nn.MultiheadAttention`` as a block, with or without its attention weights."""

    def __init__(self, weights: bool) -> None:
        super().__init__()
        self.weights = weights
        self.attention = nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x):
        return self.attention(x, x, x, need_weights=self.weights)[0]


@pytest.mark.parametrize("weights", [True, False], ids=["with-weights", "fused"])
def test_multihead_attention_gets_its_dense_sigma_max(weights):
    torch.manual_seed(8)
    block = SelfAttention(weights).double().eval()
    x = torch.randn(1, 5, 16, dtype=torch.float64)
    dense = float(torch.linalg.svdvals(flat_jacobian(block, x))[0])

    (gains,) = block_gains([block], [x], 2, 120, torch.Generator().manual_seed(0))

    assert gains.sigma_max == pytest.approx(dense, rel=1e-6)
    # with its weights, attention is written out in matmuls: no fused kernel to avoid
    assert gains.sigma_max_method == _expected_method(block, x)


# --- the new fields in the text report ----------------------------------------------------


def test_the_text_report_names_projection_shortcuts_and_the_math_attention_backend():
    report = depth_samples.residual_report(blocks=4)
    report.layers[1].shortcut = "blocks.1.downsample"
    report.layers[2].sigma_max_method = "jvp-math-attention"
    text = " ".join(rendered(report).split())

    assert "skip through a projection shortcut: blocks.1 (blocks.1.downsample)" in text
    assert "σ max of blocks.2 through attention's math backend" in text
    plain = rendered(depth_samples.residual_report(blocks=4))
    assert "projection shortcut" not in plain and "math backend" not in plain
