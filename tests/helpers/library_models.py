"""Small models in the style of published sequence-model libraries, written here (no
downloads): how real code calls its blocks, with tuples, masks, caches and its own classes."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm


class TupleBlock(nn.Module):
    """``forward(x) -> (x + tanh(f(x)), tanh(f(x)))``: the stream and a side output."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.f = nn.Linear(width, width)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = torch.tanh(self.f(x))
        return x + h, h


class TupleStack(nn.Module):
    """Six tuple-returning residual blocks in a ModuleList, then a head."""

    def __init__(self, width: int = 16, depth: int = 6) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TupleBlock(width) for _ in range(depth))
        self.head = nn.Linear(width, 1)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x, _ = block(x)
        return self.head(x)


class TemporalBlock(nn.Module):
    """A temporal-convolution block: a weight-normed causal dilated convolution with a
    residual, returning ``(out, skip)``."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.pad = 2 * dilation
        self.conv = weight_norm(nn.Conv1d(channels, channels, 3, dilation=dilation))
        self.skip = nn.Conv1d(channels, channels, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = torch.relu(self.conv(F.pad(x, (self.pad, 0))))
        return x + y, self.skip(y)


class TemporalConvNet(nn.Module):
    """An input projection, four temporal blocks whose skips are summed, an output layer.

    Input (batch, features, length), as 1-D convolutions read it.
    """

    def __init__(self, features: int = 3, channels: int = 8, blocks: int = 4) -> None:
        super().__init__()
        self.inp = nn.Conv1d(features, channels, 1)
        self.blocks = nn.ModuleList(TemporalBlock(channels, 2**i) for i in range(blocks))
        self.out = nn.Conv1d(channels, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.inp(x)
        skips = torch.zeros_like(x)
        for block in self.blocks:
            x, skip = block(x)
            skips = skips + skip
        return self.out(torch.relu(skips))


class LayerNorm(nn.Module):
    """A library's own layer norm: no ``normalized_shape`` attribute, an optional bias."""

    def __init__(self, width: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class SelfAttention(nn.Module):
    """Multi-head self-attention called with a mask; returns (output, attention weights)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        batch, steps, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=-1)
        q, k, v = (t.view(batch, steps, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(batch, steps, width)
        return self.proj(out), weights


class PreNormBlock(nn.Module):
    """``x + attn(ln1(x), mask)``, then ``x + mlp(ln2(x))``; called as ``block(x, mask, cache)``."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln1 = LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln2 = LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, x: Tensor, mask: Tensor, cache: dict | None = None) -> Tensor:
        attended, weights = self.attn(self.ln1(x), mask)
        if cache is not None:
            cache["weights"] = weights
        x = x + attended
        return x + self.mlp(self.ln2(x))


class PreNormTransformer(nn.Module):
    """A causal language model: the positional embedding is registered first and called on
    ``torch.arange(steps)``; four pre-norm blocks with a mask; its own final LayerNorm."""

    def __init__(
        self, vocab: int = 50, width: int = 16, heads: int = 2, depth: int = 4, context: int = 64
    ) -> None:
        super().__init__()
        self.pos = nn.Embedding(context, width)
        self.tok = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList(PreNormBlock(width, heads) for _ in range(depth))
        self.ln_f = LayerNorm(width)
        self.head = nn.Linear(width, vocab)

    def forward(self, ids: Tensor) -> Tensor:
        steps = ids.shape[1]
        x = self.tok(ids) + self.pos(torch.arange(steps, device=ids.device))
        mask = torch.ones(steps, steps, dtype=torch.bool, device=ids.device).tril()
        cache: dict = {}
        for block in self.blocks:
            x = block(x, mask, cache=cache)
        return self.head(self.ln_f(x))


class FloatPositional(nn.Module):
    """Features projected and added to a positional embedding registered before the
    projection; a small stack of residual blocks after."""

    def __init__(self, features: int = 8, width: int = 16, context: int = 64) -> None:
        super().__init__()
        self.pos = nn.Embedding(context, width)
        self.proj = nn.Linear(features, width)
        self.blocks = nn.ModuleList(TupleBlock(width) for _ in range(3))
        self.head = nn.Linear(width, 1)

    def forward(self, x: Tensor) -> Tensor:
        steps = x.shape[1]
        x = self.proj(x) + self.pos(torch.arange(steps, device=x.device))
        for block in self.blocks:
            x, _ = block(x)
        return self.head(x)


class ParallelScanGRU(nn.Module):
    """A minimal GRU computed by a parallel scan: ``h_t = (1 - z_t) h_{t-1} + z_t h~_t`` with
    ``z_t`` and ``h~_t`` from the input alone, evaluated with cumulative products and sums
    (no loop, no recurrent module). :class:`SteppedScanGRU` is the same, one step at a time."""

    def __init__(self, features: int = 8, hidden: int = 16, gate_bias: float = 0.7) -> None:
        super().__init__()
        self.to_z = nn.Linear(features, hidden)
        self.to_h = nn.Linear(features, hidden)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.to_z.bias.fill_(gate_bias)

    def forward(self, x: Tensor) -> Tensor:
        z = torch.sigmoid(self.to_z(x))
        candidate = self.to_h(x)
        keep = torch.cumprod(1 - z, dim=1)  # prod_{s<=t} (1 - z_s)
        h = keep * torch.cumsum(z * candidate / keep, dim=1)
        return self.head(h)


class PerStepPooled(nn.Module):
    """An MLP applied to each step, then a mean over time: time is mixed by pooling alone."""

    def __init__(self, features: int = 8, width: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, width), nn.Tanh(), nn.Linear(width, width))
        self.head = nn.Linear(width, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.net(x).mean(dim=1))


class ScanStep(nn.Module):
    """One step of :class:`ParallelScanGRU`'s recurrence, as a cell: ``cell(x_t, h) -> h``."""

    def __init__(self, scan: ParallelScanGRU) -> None:
        super().__init__()
        self.to_z, self.to_h = scan.to_z, scan.to_h

    def forward(self, x_t: Tensor, h: Tensor) -> Tensor:
        z = torch.sigmoid(self.to_z(x_t))
        return (1 - z) * h + z * self.to_h(x_t)


class SteppedScanGRU(nn.Module):
    """The same weights as a :class:`ParallelScanGRU`, stepped one step at a time."""

    def __init__(self, scan: ParallelScanGRU) -> None:
        super().__init__()
        self.cell = ScanStep(scan)
        self.head = scan.head
        self.hidden = scan.to_h.out_features

    def forward(self, x: Tensor) -> Tensor:
        h = x.new_zeros(x.shape[0], self.hidden)
        states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            states.append(h)
        return self.head(torch.stack(states, dim=1))


class Forecaster(nn.Module):
    """A forecasting-library style model: ``forward(batch)`` reads a dict of tensors (past
    targets, known covariates, a static category), encodes the past with an LSTM and
    decodes a few steps."""

    def __init__(self, covariates: int = 3, hidden: int = 12, horizon: int = 4) -> None:
        super().__init__()
        self.horizon = horizon
        self.static = nn.Embedding(5, hidden)
        self.encoder = nn.LSTM(1 + covariates, hidden, batch_first=True)
        self.decoder = nn.Linear(hidden, horizon)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        past = torch.cat([batch["past_target"].unsqueeze(-1), batch["past_covariates"]], dim=-1)
        start = self.static(batch["category"]).unsqueeze(0)
        states, _ = self.encoder(past, (start, torch.zeros_like(start)))
        return {"prediction": self.decoder(states[:, -1]), "states": states}


class GlobalContext(nn.Module):
    """Per-step layers with the mean over all steps added back between them: time is mixed in
    forward, but not causally, so not by a recurrence."""

    def __init__(self, features: int = 8, width: int = 16) -> None:
        super().__init__()
        self.inp = nn.Linear(features, width)
        self.mid = nn.Linear(width, width)
        self.head = nn.Linear(width, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.inp(x))
        h = h + h.mean(dim=1, keepdim=True)
        return self.head(torch.tanh(self.mid(h)))


class StepCell(nn.Module):
    """A tanh cell written by hand: ``cell(x_t, h) -> h``."""

    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.ih = nn.Linear(features, hidden)
        self.hh = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x_t: Tensor, h: Tensor) -> Tensor:
        return torch.tanh(self.ih(x_t) + self.hh(h))


class LoopedCellBlock(nn.Module):
    """An xLSTM-style block: a hand-written cell looped over time inside the block, with a
    residual around it."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.cell = StepCell(width, width)

    def forward(self, x: Tensor) -> Tensor:
        h = x.new_zeros(x.shape[0], x.shape[2])
        states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            states.append(h)
        return x + torch.stack(states, dim=1)


class LoopedCellStack(nn.Module):
    """An input projection, a looped-cell block, an output layer."""

    def __init__(self, features: int = 4, width: int = 8) -> None:
        super().__init__()
        self.inp = nn.Linear(features, width)
        self.block = LoopedCellBlock(width)
        self.out = nn.Linear(width, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.block(self.inp(x)))


class ScanMixer(nn.Module):
    """A state-space mixer in the Mamba style: a decaying linear recurrence over time computed
    by cumulative sums, inside a module."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.proj = nn.Linear(width, width)
        self.log_decay = nn.Parameter(torch.full((width,), -0.5))

    def forward(self, x: Tensor) -> Tensor:
        steps = torch.arange(x.shape[1], device=x.device, dtype=x.dtype)[:, None]
        decay = self.log_decay * steps  # log of a^t
        return torch.exp(decay) * torch.cumsum(self.proj(x) * torch.exp(-decay), dim=1)


class ScanBlockStack(nn.Module):
    """Residual blocks ``x + mixer(x)`` stacked in a ModuleList, in the parent's loop."""

    def __init__(self, width: int = 8, depth: int = 3) -> None:
        super().__init__()
        self.inp = nn.Linear(4, width)
        self.mixers = nn.ModuleList(ScanMixer(width) for _ in range(depth))
        self.out = nn.Linear(width, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.inp(x)
        for mixer in self.mixers:
            x = x + mixer(x)
        return self.out(x)


class SharedDepth(nn.Module):
    """Weights shared over depth (ALBERT style): one layer applied four times to its own
    output, also registered under a second name; not a recurrence over time."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.shared = nn.Linear(width, width)
        self.layers = nn.ModuleList([self.shared, nn.Linear(width, width), self.shared])
        self.out = nn.Linear(width, 2)

    def forward(self, x: Tensor) -> Tensor:
        for layer in [*self.layers, self.shared]:
            x = torch.tanh(layer(x))
        return self.out(x)


class ParentResiduals(nn.Module):
    """Residuals added in the parent's loop with a small branch: ``x + 0.01 sigmoid(l(x))``.
    Its Jacobian is near the identity, whatever each Linear's gain."""

    def __init__(self, width: int = 16, depth: int = 12) -> None:
        super().__init__()
        self.lins = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))

    def forward(self, x: Tensor) -> Tensor:
        for lin in self.lins:
            x = x + 0.01 * torch.sigmoid(lin(x))
        return x


class LSTM(nn.Module):
    """A library's own 'LSTM': a tanh recurrence looped over steps with raw parameters, no
    cell module, returning (outputs, last state) as PyTorch's does."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.weight_ih = nn.Parameter(torch.randn(hidden_size, input_size) * 0.3)
        self.weight_hh = nn.Parameter(torch.randn(hidden_size, hidden_size) * 0.3)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = x.new_zeros(x.shape[0], self.hidden_size)
        states = []
        for t in range(x.shape[1]):
            h = torch.tanh(x[:, t] @ self.weight_ih.t() + h @ self.weight_hh.t())
            states.append(h)
        return torch.stack(states, dim=1), h


class OwnLSTMTagger(nn.Module):
    """A projection, the library's own LSTM, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 8)
        self.lstm = LSTM(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.lstm(self.proj(x))
        return self.head(out)


class GreedyDecoder(nn.Module):
    """A GRU cell encoder, then five decoder steps, each through the same head."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.GRUCell(4, 8)
        self.decoder = nn.GRUCell(1, 8)
        self.head = nn.Linear(8, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = x.new_zeros(x.shape[0], 8)
        for x_t in x.unbind(1):
            h = self.encoder(x_t, h)
        y, outputs = x.new_zeros(x.shape[0], 1), []
        for _ in range(5):
            h = self.decoder(y, h)
            y = self.head(h)
            outputs.append(y)
        return torch.stack(outputs, dim=1)
