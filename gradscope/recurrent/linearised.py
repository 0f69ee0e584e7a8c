"""Closed-form step Jacobians and Jacobian-vector products of PyTorch's own cells.

For ``s' = step(s, u)`` of :func:`gradscope.recurrent.cells.step_function`, a few lines of
algebra per cell give ``J = ds'/ds`` (rows (M, n) -> (M, n, n)) and ``J v`` (-> (M, n))
without ``torch.func``: no tracing, no one-time imports, the same numbers (tested against
``torch.func.jacfwd`` and ``jvp`` as twins). Custom cells keep ``torch.func``.

With ``a = u + W_hh h`` (GRU: ``W_hh s + b_hh`` per gate) and the gate slopes
``sigma' = sigma (1 - sigma)``, ``tanh' = 1 - tanh^2``:

- RNN: ``J = diag(phi'(a)) W_hh``.
- LSTM (state ``(h, c)``, optional projection P): ``dc' = c f' da_f + i' g da_i + i g' da_g +
  f dc``; ``dm = tanh(c') o' da_o + o tanh'(c') dc'``; ``dh' = P dm``.
- GRU: ``ds' = (1 - z) dn + (s - n) z' da_z + z ds`` with
  ``dn = tanh'(.) (g_n r' da_r + r W_n ds)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import functional as F

from gradscope.krylov import Products
from gradscope.recurrent.cells import CellSpec, CellWeights

Jacobian = Callable[[Tensor, Tensor], Tensor]
TangentMap = Callable[[Tensor, Tensor, Tensor], Tensor]


def _slope(kind: str, pre: Tensor) -> Tensor:
    if kind == "rnn_tanh":
        return 1 - torch.tanh(pre) ** 2
    return (pre > 0).to(pre.dtype)


def _lstm_parts(spec: CellSpec, weights: CellWeights, s: Tensor, u: Tensor) -> tuple:
    out = spec.output_size
    h, c = s[..., :out], s[..., out:]
    a_i, a_f, a_g, a_o = (u + F.linear(h, weights.weight_hh)).chunk(4, dim=-1)
    i, f, g, o = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.tanh(a_g), torch.sigmoid(a_o)
    c_next = f * c + i * g
    tanh_c = torch.tanh(c_next)
    # d c' / d a for the (i, f, g) pre-activations
    dc_da = (g * i * (1 - i), c * f * (1 - f), i * (1 - g * g))
    return h, c, f, o, tanh_c, dc_da


def _gru_parts(weights: CellWeights, s: Tensor, u: Tensor) -> tuple:
    u_r, u_z, u_n = u.chunk(3, dim=-1)
    g_r, g_z, g_n = F.linear(s, weights.weight_hh, weights.bias_hh).chunk(3, dim=-1)
    r = torch.sigmoid(u_r + g_r)
    z = torch.sigmoid(u_z + g_z)
    n = torch.tanh(u_n + r * g_n)
    return r, z, n, g_n


def jacobian_function(spec: CellSpec, weights: CellWeights) -> Jacobian:
    """``(s, u) -> J`` for rows ``s`` (M, n) and ``u`` (M, G): the exact (M, n, n) Jacobians."""
    w_hh = weights.weight_hh

    if spec.kind in ("rnn_tanh", "rnn_relu"):

        def rnn(s: Tensor, u: Tensor) -> Tensor:
            return _slope(spec.kind, u + F.linear(s, w_hh))[..., :, None] * w_hh

        return rnn

    if spec.kind == "lstm":
        w_i, w_f, w_g, w_o = w_hh.chunk(4, dim=0)  # (H, out) each
        projection = weights.weight_hr

        def lstm(s: Tensor, u: Tensor) -> Tensor:
            _, _, f, o, tanh_c, (di, df, dg) = _lstm_parts(spec, weights, s, u)
            dc_dh = di[..., None] * w_i + df[..., None] * w_f + dg[..., None] * w_g
            dc_dc = torch.diag_embed(f)
            keep = o * (1 - tanh_c * tanh_c)
            dm_dh = (tanh_c * o * (1 - o))[..., None] * w_o + keep[..., None] * dc_dh
            dm_dc = torch.diag_embed(keep * f)
            if projection is not None:
                dm_dh, dm_dc = projection @ dm_dh, projection @ dm_dc
            top = torch.cat((dm_dh, dm_dc), dim=-1)
            bottom = torch.cat((dc_dh, dc_dc), dim=-1)
            return torch.cat((top, bottom), dim=-2)

        return lstm

    if spec.kind == "gru":
        w_r, w_z, w_n = w_hh.chunk(3, dim=0)

        def gru(s: Tensor, u: Tensor) -> Tensor:
            r, z, n, g_n = _gru_parts(weights, s, u)
            dn = 1 - n * n
            dn_ds = (dn * g_n * r * (1 - r))[..., None] * w_r + (dn * r)[..., None] * w_n
            dz_ds = ((s - n) * z * (1 - z))[..., None] * w_z
            return (1 - z)[..., None] * dn_ds + dz_ds + torch.diag_embed(z)

        return gru

    raise ValueError(f"unknown cell kind {spec.kind!r}")


def linearisation(spec: CellSpec, weights: CellWeights, s: Tensor, u: Tensor) -> Products:
    """The step of a built-in cell linearised at rows ``s`` (M, n) and ``u`` (M, G):
    ``push(v) = J v`` and ``pull(w) = J^T w``, with the gate values computed once."""
    w_hh = weights.weight_hh

    if spec.kind in ("rnn_tanh", "rnn_relu"):
        slope = _slope(spec.kind, u + F.linear(s, w_hh))
        return Products(
            push=lambda v: slope * F.linear(v, w_hh),
            pull=lambda w: (slope * w) @ w_hh,
        )

    if spec.kind == "lstm":
        out = spec.output_size
        projection = weights.weight_hr
        _, _, f, o, tanh_c, (di, df, dg) = _lstm_parts(spec, weights, s, u)
        d_output = tanh_c * o * (1 - o)  # dm / da_o
        keep = o * (1 - tanh_c * tanh_c)  # dm / dc'

        def lstm_push(v: Tensor) -> Tensor:
            d_i, d_f, d_g, d_o = F.linear(v[..., :out], w_hh).chunk(4, dim=-1)
            dc = di * d_i + df * d_f + dg * d_g + f * v[..., out:]
            dm = d_output * d_o + keep * dc
            dh = dm if projection is None else F.linear(dm, projection)
            return torch.cat((dh, dc), dim=-1)

        def lstm_pull(w: Tensor) -> Tensor:
            w_h, w_c = w[..., :out], w[..., out:]
            w_m = w_h if projection is None else w_h @ projection
            w_dc = w_c + keep * w_m
            gates = torch.cat((di * w_dc, df * w_dc, dg * w_dc, d_output * w_m), dim=-1)
            return torch.cat((gates @ w_hh, f * w_dc), dim=-1)

        return Products(lstm_push, lstm_pull)

    if spec.kind == "gru":
        r, z, n, g_n = _gru_parts(weights, s, u)
        d_reset = (1 - z) * (1 - n * n) * g_n * r * (1 - r)  # ds' / da_r
        d_new = (1 - z) * (1 - n * n) * r  # ds' / d(W_n s)
        d_update = (s - n) * z * (1 - z)  # ds' / da_z

        def gru_push(v: Tensor) -> Tensor:
            d_r, d_z, d_n = F.linear(v, w_hh).chunk(3, dim=-1)
            return d_reset * d_r + d_update * d_z + d_new * d_n + z * v

        def gru_pull(w: Tensor) -> Tensor:
            gates = torch.cat((d_reset * w, d_update * w, d_new * w), dim=-1)
            return gates @ w_hh + z * w

        return Products(gru_push, gru_pull)

    raise ValueError(f"unknown cell kind {spec.kind!r}")


def jvp_function(spec: CellSpec, weights: CellWeights) -> TangentMap:
    """``(s, u, v) -> J(s, u) v`` for rows ``s``, ``u`` and tangents ``v`` (M, n)."""

    def jvp(s: Tensor, u: Tensor, v: Tensor) -> Tensor:
        return linearisation(spec, weights, s, u).push(v)

    return jvp
