"""Hand-built depth stacks (no torch): deep feed-forward and residual models for rendering tests.

The numbers follow the feed-forward oracles: a sigmoid MLP with Xavier init passes about 0.236
of the gradient per block, a ReLU MLP with He init about all of it, and an unscaled residual
block about sqrt(2) (its branch adds a gain of 1 to the identity). Each block's gain carries a
small, seeded jitter so that tables and charts look measured, not drawn.
"""

from __future__ import annotations

import dataclasses
import math
import random

from gradscope.report import DepthLayer, DepthStack, Finding, Fix, Report

from tests.helpers.samples import MODEL, SETTINGS, core

ESTIMATOR = {
    "chi": "Hutchinson: mean ||J^T u||^2 / n_out, u ~ N(0, I), batched VJPs",
    "chi_probes": 8,
    "sigma_max": "power iteration on J^T J with JVPs and VJPs",
    "power_iterations": 3,
}
DEPTH_SETTINGS = dataclasses.replace(SETTINGS, input_shape=[64, 512], batch=64)
DEPTH_MODEL = dataclasses.replace(MODEL, class_name="MLP", parameters=13_132_800)


def _gains(blocks: int, gain: float, jitter: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [gain * (1 + jitter * rng.uniform(-1, 1)) for _ in range(blocks)]


def _grad_norms(gains: list[float], output_grad_norm: float) -> list[float]:
    """``||dL/da_i||`` input side first: each block's output gradient times the gains after it."""
    norms = [output_grad_norm]
    for gain in reversed(gains[1:]):
        norms.append(norms[-1] * gain)
    return norms[::-1]


def stack(
    layers: list[DepthLayer], spread: float | None, status: str, distance: int | None = None
) -> DepthStack:
    """The stack summary that ``layers`` imply, with the input-output Jacobian's ``spread``."""
    output_grad_norm = layers[-1].grad_norm
    input_grad_norm = layers[0].grad_norm * layers[0].gain
    decades = math.log10(input_grad_norm / output_grad_norm)
    rms = math.sqrt(math.prod(layer.chi for layer in layers))
    return DepthStack(
        blocks=len(layers),
        input_grad_norm=input_grad_norm,
        output_grad_norm=output_grad_norm,
        decades=decades,
        gain_per_block=10 ** (decades / len(layers)),
        sigma_max=None if spread is None else spread * rms,
        rms_singular_value=rms,
        spread=spread,
        residual_blocks=sum(layer.residual for layer in layers),
        granularity="blocks",
        estimator=ESTIMATOR,
        status=status,
        distance=len(layers) if distance is None else distance,
    )


def plain_mlp(
    blocks: int = 50,
    activation: str = "sigmoid",
    gain: float = 0.236,
    parent: str = "net",
    width: int = 512,
    seed: int = 0,
) -> list[DepthLayer]:
    """``nn.Sequential(Linear, Sigmoid, Linear, Sigmoid, ...)``, one block per Linear+activation."""
    gains = _gains(blocks, gain, 0.03, seed)
    rng = random.Random(seed + 1)
    saturating = activation in ("sigmoid", "tanh")
    layers = []
    for index, (block_gain, grad_norm) in enumerate(
        zip(gains, _grad_norms(gains, 1.0), strict=True)
    ):
        chi = block_gain**2 * (1 + 0.02 * rng.uniform(-1, 1))
        linear, act = f"{parent}.{2 * index}", f"{parent}.{2 * index + 1}"
        layers.append(
            DepthLayer(
                name=linear,
                type=f"Linear+{activation.capitalize() if saturating else 'ReLU'}",
                modules=[linear, act],
                input_size=width,
                output_size=width,
                grad_norm=grad_norm,
                gain=block_gain,
                chi=chi,
                sigma_max=math.sqrt(chi) * 2.0 * (1 + 0.05 * rng.uniform(-1, 1)),
                saturated=rng.uniform(0.001, 0.004) if saturating else None,
                dead=None if saturating else rng.uniform(0.0, 0.02),
                activation=activation,
                parent=parent,
                indices=[2 * index, 2 * index + 1],
            )
        )
    return layers


def residual_stack(
    blocks: int = 50, alpha: float = 1.0, width: int = 512, seed: int = 0
) -> list[DepthLayer]:
    """Blocks ``x + alpha * fc2(relu(fc1(x)))``: gain about ``sqrt(1 + alpha^2)`` per block."""
    branch_chi = alpha**2
    gains = _gains(blocks, math.sqrt(1 + branch_chi), 0.015, seed)
    rng = random.Random(seed + 1)
    layers = []
    for index, (block_gain, grad_norm) in enumerate(
        zip(gains, _grad_norms(gains, 1.0), strict=True)
    ):
        name = f"blocks.{index}"
        layers.append(
            DepthLayer(
                name=name,
                type="ResidualBlock",
                modules=[f"{name}.fc1", f"{name}.act", f"{name}.fc2"],
                input_size=width,
                output_size=width,
                grad_norm=grad_norm,
                gain=block_gain,
                chi=block_gain**2 * (1 + 0.01 * rng.uniform(-1, 1)),
                sigma_max=1 + 2.9 * alpha * (1 + 0.05 * rng.uniform(-1, 1)),
                residual=True,
                branch_chi=branch_chi * (1 + 0.03 * rng.uniform(-1, 1)),
                dead=rng.uniform(0.0, 0.02),
                activation="relu",
                parent="blocks",
                indices=[index],
                branch_last=f"{name}.fc2",
            )
        )
    return layers


def depth_finding(depth: DepthStack, layers: list[DepthLayer], message: str, fixes: list[str]):
    """The error behind a failing stack, placed on the whole stack."""
    where = {"stack": "depth", "blocks": depth.blocks, "first": layers[0].name}
    where["last"] = layers[-1].name
    kind = depth.status
    return Finding(f"{kind}-gradient", kind, "error", where, message, fixes)


RESIDUAL_SNIPPET = """\
# wrap each Linear+Sigmoid pair in a skip: the block's
# Jacobian becomes I + dF/dx
class Residual(nn.Module):
    def __init__(self, branch):
        super().__init__()
        self.branch = branch

    def forward(self, x):
        return x + self.branch(x)

model.net = nn.Sequential(*(
    Residual(model.net[i : i + 2])
    for i in range(0, len(model.net), 2)
))"""

ACTIVATION_SNIPPET = """\
for i in range(0, len(model.net), 2):
    model.net[i + 1] = nn.ReLU()
    nn.init.kaiming_normal_(model.net[i].weight, nonlinearity="relu")
    nn.init.zeros_(model.net[i].bias)"""

NORMALIZATION_SNIPPET = """\
# a LayerNorm before each tanh keeps it out of saturation
for i in range(0, len(model.head), 2):
    width = model.head[i].out_features
    model.head[i + 1] = nn.Sequential(nn.LayerNorm(width), nn.Tanh())"""


def sigmoid_mlp_report() -> Report:
    """A depth-50 sigmoid MLP with Xavier init: vanishing, about -31 decades."""
    layers = plain_mlp()
    depth = stack(layers, spread=38.6, status="vanishing")
    why = (
        f"depth stack ({depth.blocks} blocks, net.0 … net.98): the gradient shrinks "
        f"{-depth.decades:.1f} decades from the output to the input ({depth.gain_per_block:.3f} "
        "per block); a sigmoid passes at most a quarter of the gradient"
    )
    finding = depth_finding(
        depth, layers, why + ": add skips or use ReLU with He init.", ["residual-connections"]
    )
    finding.fixes.append("change-activation")
    fixes = [
        Fix(
            "residual-connections",
            "Add skip connections around the blocks",
            f"Why: {why}. A skip adds the identity to each block's Jacobian (I + dF/dx).",
            RESIDUAL_SNIPPET,
        ),
        Fix(
            "change-activation",
            "Use ReLU with He init instead of sigmoid",
            f"Why: {why}. ReLU with He init keeps chi near 1 per block.",
            ACTIVATION_SNIPPET,
        ),
    ]
    return Report(
        status="vanishing",
        settings=DEPTH_SETTINGS,
        model=DEPTH_MODEL,
        gradscope_version="0.1.0",
        layers=layers,
        stack=depth,
        findings=[finding],
        fixes=fixes,
    )


def relu_mlp_report() -> Report:
    """The same MLP with ReLU and He init: healthy, about 0.1 decade in total."""
    layers = plain_mlp(activation="relu", gain=0.9905)
    return Report(
        status="healthy",
        settings=DEPTH_SETTINGS,
        model=DEPTH_MODEL,
        gradscope_version="0.1.0",
        layers=layers,
        stack=stack(layers, spread=6.2, status="healthy"),
    )


def residual_report(blocks: int = 50, alpha: float = 1.0) -> Report:
    """Residual blocks with branch scale ``alpha``: exploding at alpha 1 and depth 50."""
    layers = residual_stack(blocks, alpha)
    status = "exploding" if alpha == 1.0 else "healthy"
    depth = stack(layers, spread=4.1, status=status)
    findings = []
    if status == "exploding":
        message = (
            f"depth stack ({blocks} blocks, blocks.0 … blocks.{blocks - 1}): the gradient "
            f"grows {depth.decades:.1f} decades from the output to the input "
            f"({depth.gain_per_block:.3f} per block): unscaled residual branches add up."
        )
        findings.append(depth_finding(depth, layers, message, ["scale-residual-branch"]))
    return Report(
        status=status,
        settings=DEPTH_SETTINGS,
        model=dataclasses.replace(DEPTH_MODEL, class_name="ResidualMLP"),
        gradscope_version="0.1.0",
        layers=layers,
        stack=depth,
        findings=findings,
    )


def mixed_report() -> Report:
    """A healthy LSTM encoder feeding a 20-block tanh head whose gradient vanishes over depth."""
    encoder = core("lstm", -0.01, hidden_size=32, distance=100)
    layers = plain_mlp(blocks=20, activation="tanh", gain=0.62, parent="head", width=64, seed=3)
    for index, layer in enumerate(layers):
        layer.saturated = 0.04 + 0.004 * index
    depth = stack(layers, spread=7.9, status="vanishing")
    why = (
        f"depth stack ({depth.blocks} blocks, head.0 … head.38): the gradient shrinks "
        f"{-depth.decades:.1f} decades from the output to the input ({depth.gain_per_block:.3f} "
        "per block); up to 12% of the tanh units saturate"
    )
    finding = depth_finding(depth, layers, why + ".", ["normalization", "residual-connections"])
    fixes = [
        Fix(
            "normalization",
            "Normalise before the saturating activations",
            f"Why: {why}. A LayerNorm keeps pre-activations where tanh has slope.",
            NORMALIZATION_SNIPPET,
        ),
        Fix(
            "residual-connections",
            "Add skip connections around the blocks",
            f"Why: {why}. A skip adds the identity to each block's Jacobian (I + dF/dx).",
            RESIDUAL_SNIPPET.replace("Sigmoid", "Tanh").replace("model.net", "model.head"),
        ),
    ]
    return Report(
        status="vanishing",
        settings=SETTINGS,
        model=dataclasses.replace(MODEL, class_name="Seq2Vec"),
        gradscope_version="0.1.0",
        input_grad_norm=[1.0] * 100,
        recurrent=[encoder],
        layers=layers,
        stack=depth,
        findings=[finding],
        fixes=fixes,
    )
