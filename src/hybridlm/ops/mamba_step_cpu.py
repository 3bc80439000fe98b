"""One Mamba-1 decoding step, from the in-projection's output to the gated SSM output, in one numba call.

Glossary (layers/mamba.py): b batch, d_in channels, g heads (groups of channels), w = d_in / g,
r dt rank, n state size, k conv width.

Decoding one token through the mixer's torch code is ~100 small eager ops (about 0.45 ms at
d_in = 96 here), while its arithmetic is a few thousand multiply-adds. This kernel does the
same step, in the same order as the layer, for one token:

    x      = SiLU(conv(window, x))              the window (b, d_in, k-1) shifts in place
    [dt_r, B, C] = x_proj(x)                    per head, (g, r + 2n, w) weights
    dt_r, B, C = RMSNorm(.)                     only with `inner_norms` (Jamba)
    dt     = softplus(dt_proj(dt_r) + bias)
    h      = exp(dt A) h + dt B x                (b, d_in, n), in place
    y      = (C.h + D x) * SiLU(z)

so the caller's conv and SSM states are updated in place and only y (b, d_in) is allocated.

`_sublayer_step` runs the whole pre-normed sub-layer for one token in one call, the norm and
both projections included (out_proj(step(in_proj(RMSNorm(u))))), with its weights viewed in place
(ops/decode_cpu.py): decoding a tiny Mamba drops from ~8 eager ops and ~60 us a layer to one call.

Every loop is written to vectorise, since past the weight reads the step is arithmetic on d_in n
elements: softplus and SiLU branch-free on numba_support's exp (libm's are scalar calls); each
channel's n states 16 at a time on ops/simd.py vectors, exp(dt A) = 2^(dt A log2 e); dt_proj read
as a transposed copy (g, r, w), so dt accumulates along whole rows; the GEMVs four weight rows per
pass over the input. numba's cache follows this file only: after editing ops/simd.py, delete
ops/__pycache__/mamba_step_cpu*.nb* too.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit

from . import simd
from .causal_conv_cpu import conv_token
from .decode_cpu import DecodeWeights, gemv_rows, norm_views, rms_norm_into, viewable, weight_view
from .numba_support import as_array, exp_nonpositive, step_arrays
from .simd import LANES

_LN2 = np.float32(math.log(2.0))


@njit(fastmath=True, error_model="numpy", cache=True)
def _rms_norm(v, weight, eps):
    mean_square = np.float32(0.0)
    for i in range(v.size):
        mean_square += v[i] * v[i]
    scale = np.float32(1.0) / np.sqrt(mean_square / v.size + eps)
    for i in range(v.size):
        v[i] = v[i] * scale * weight[i]


@njit(inline="always", fastmath=True, error_model="numpy")
def _softplus(a):
    """log(1 + e^a) = max(a, 0) + log1p(e^-|a|), with log1p(v) = 2 atanh(s), s = v / (2 + v) <= 1/3, by its
    odd series to s^13 (truncation 2e-8 relative): branch-free arithmetic, so a loop over it vectorises
    (libm's log1p and exp are scalar calls). Equals a from ~15 on, where e^-a is below a's half ulp,
    as torch's softplus (threshold 20) does."""
    v = exp_nonpositive(-abs(a))
    s = v / (np.float32(2.0) + v)
    s2 = s * s
    p = np.float32(1.0 / 13.0)
    p = p * s2 + np.float32(1.0 / 11.0)
    p = p * s2 + np.float32(1.0 / 9.0)
    p = p * s2 + np.float32(1.0 / 7.0)
    p = p * s2 + np.float32(1.0 / 5.0)
    p = p * s2 + np.float32(1.0 / 3.0)
    p = p * s2 + np.float32(1.0)
    return max(a, np.float32(0.0)) + np.float32(2.0) * s * p


@njit(inline="always", fastmath=True, error_model="numpy")
def _silu(a):
    """a * sigmoid(a) from e^-|a| only (no overflow), branch-free so that a loop over it vectorises."""
    e = exp_nonpositive(-abs(a))
    return a * (np.float32(1.0) if a >= 0 else e) / (np.float32(1.0) + e)


@njit(fastmath=True, error_model="numpy", cache=True)
def _step(
    x_in, z, conv_state, conv_weight, conv_bias, x_proj, dt_proj_t, dt_bias, inner_norms, dt_norm, B_norm, C_norm, eps,
    A_log2e, D, ssm_state, out,
):  # fmt: skip
    """dt_proj_t: dt_proj transposed, (g, r, w), so dt accumulates over whole contiguous rows of it;
    A_log2e = A log2(e) (d_in, n): exp(dt A) = 2^(dt A log2 e), simd.exp2 on 16 states at once."""
    batch, channels = x_in.shape
    heads, n_out, head_width = x_proj.shape
    rank = dt_proj_t.shape[1]
    d_state = A_log2e.shape[1]
    vector_states = d_state - d_state % LANES
    x = np.empty(channels, np.float32)
    projected = np.empty(n_out, np.float32)
    dt = np.empty(head_width, np.float32)
    no_bias = np.empty(0, np.float32)
    for row in range(batch):
        for c in range(channels):
            x[c] = conv_token(conv_weight, conv_bias, conv_state, row, c, x_in[row, c])
        for c in range(channels):
            x[c] = _silu(x[c])
        for g in range(heads):
            c0 = g * head_width
            gemv_rows(x_proj[g], no_bias, x.reshape((1, channels)), c0, projected.reshape((1, n_out)), 0)
            if inner_norms:
                _rms_norm(projected[:rank], dt_norm, eps)
                _rms_norm(projected[rank : rank + d_state], B_norm, eps)
                _rms_norm(projected[rank + d_state :], C_norm, eps)
            for i in range(head_width):
                dt[i] = dt_bias[g, i]
            for q in range(rank):
                for i in range(head_width):
                    dt[i] += dt_proj_t[g, q, i] * projected[q]
            for i in range(head_width):
                dt[i] = _softplus(dt[i])
            for i in range(head_width):  # the states 16 at a time (simd), the rest one by one
                c, step = c0 + i, dt[i]
                drive, base = step * x[c], (row * channels + c) * d_state
                y_lanes = simd.splat(np.float32(0.0))
                for k in range(0, vector_states, LANES):
                    decay = simd.exp2(simd.splat(step) * simd.load(A_log2e, c * d_state + k))
                    drives = simd.splat(drive) * simd.load(projected, rank + k)
                    h = simd.fma(decay, simd.load(ssm_state, base + k), drives)
                    simd.store(ssm_state, base + k, h)
                    y_lanes = simd.fma(simd.load(projected, rank + d_state + k), h, y_lanes)
                y = D[c] * x[c] + simd.total(y_lanes)
                for k in range(vector_states, d_state):
                    h = (
                        exp_nonpositive(step * A_log2e[c, k] * _LN2) * ssm_state[row, c, k]
                        + drive * projected[rank + k]
                    )
                    ssm_state[row, c, k] = h
                    y += projected[rank + d_state + k] * h
                out[row, c] = y
        for c in range(channels):
            out[row, c] *= _silu(z[row, c])


def _A_log2e(A_log: torch.Tensor) -> np.ndarray:
    """A log2(e) = -exp(A_log) log2(e) (d_in, n) float32, rounded once from float64."""
    return as_array(-torch.exp(A_log.detach().double()) * math.log2(math.e))


def _weight_arrays(conv_weight, conv_bias, x_proj, dt_proj, dt_bias, A_log, D, norm_weights, norm_eps) -> tuple:
    """The step's weights as numpy arrays (views when float32), dt_proj transposed and A log2(e), kept between
    tokens by `numba_support.step_arrays`."""
    norms = tuple(norm_weights or ())

    def build():
        channels = conv_weight.shape[0]
        norm_arrays = [as_array(weight) for weight in norms] or [np.ones(0, np.float32)] * 3
        return (
            as_array(conv_weight.reshape(channels, -1)),
            as_array(conv_bias) if conv_bias is not None else np.zeros(channels, np.float32),
            as_array(x_proj),
            as_array(dt_proj.detach().transpose(1, 2)),  # (g, r, w): a copy, rebuilt as dt_proj changes
            as_array(dt_bias),
            bool(norms),
            *norm_arrays,
            np.float32(norm_eps if norms else 0.0),
            _A_log2e(A_log),
            as_array(D),
        )

    return step_arrays(x_proj, [conv_weight, conv_bias, x_proj, dt_proj, dt_bias, A_log, D, *norms], build)


def mamba_decode_step(
    x_in, z, conv_state, ssm_state, conv_weight, conv_bias, x_proj, dt_proj, dt_bias, A_log, D, norm_weights, norm_eps
) -> torch.Tensor:
    """x_in, z (b, 1, d_in) -> y (b, 1, d_in) fp32; updates conv_state (b, d_in, k-1) and ssm_state
    (b, d_in, n) in place (both float32 and contiguous). Weights as layers/mamba.py holds them:
    conv (d_in, 1, k), x_proj (g, r + 2n, w), dt_proj (g, w, r), dt_bias (g, w), A_log (d_in, n),
    D (d_in,); `norm_weights` (dt, B, C) RMSNorm weights with `inner_norms`, else None."""
    batch, _, channels = x_in.shape
    arrays = _weight_arrays(conv_weight, conv_bias, x_proj, dt_proj, dt_bias, A_log, D, norm_weights, norm_eps)
    conv_w, conv_b, x_proj_a, dt_proj_t, dt_bias_a, *norms_and_eps, A_log2e, D_a = arrays
    out = torch.empty(batch, channels, dtype=torch.float32)
    _step(
        as_array(x_in.reshape(batch, channels)),
        as_array(z.reshape(batch, channels)),
        conv_state.numpy(),
        conv_w,
        conv_b,
        x_proj_a,
        dt_proj_t,
        dt_bias_a,
        *norms_and_eps,
        A_log2e,
        D_a,
        ssm_state.numpy(),
        out.numpy(),
    )
    return out.view(batch, 1, channels)


@njit(fastmath=True, error_model="numpy", cache=True)
def _sublayer_step(
    u, norm_weight, eps, offset, in_weight, in_bias, conv_state, conv_weight, conv_bias, x_proj, dt_proj_t, dt_bias,
    inner_norms, dt_norm, B_norm, C_norm, inner_eps, A_log2e, D, ssm_state, out_weight, out_bias, out,
):  # fmt: skip
    batch = u.shape[0]
    channels = A_log2e.shape[0]
    normed = np.empty_like(u)
    rms_norm_into(u, norm_weight, eps, offset, normed)
    xz = np.empty((batch, 2 * channels), np.float32)
    gemv_rows(in_weight, in_bias, normed, 0, xz, 0)
    y = np.empty((batch, channels), np.float32)
    _step(
        xz[:, :channels], xz[:, channels:], conv_state, conv_weight, conv_bias, x_proj, dt_proj_t, dt_bias,
        inner_norms, dt_norm, B_norm, C_norm, inner_eps, A_log2e, D, ssm_state, y,
    )  # fmt: skip
    gemv_rows(out_weight, out_bias, y, 0, out, 0)


def sublayer_weights(norm, mixer) -> tuple | None:
    """DecodeWeights and the views `_sublayer_step` takes (decode_cpu.conv_ssm_sublayer), for a pre-norm
    and a Mamba mixer whose parameters are float32 and contiguous; None otherwise. A log2(e) and
    dt_proj transposed are the copies (they follow A_log's and dt_proj's in-place changes through their versions)."""
    inner = (mixer.dt_norm, mixer.B_norm, mixer.C_norm) if mixer.options.inner_norms else ()
    tensors = [
        norm.weight, mixer.in_proj.weight, mixer.in_proj.bias, mixer.conv.weight, mixer.conv.bias,
        mixer.x_proj_weight, mixer.dt_proj_weight, mixer.dt_proj_bias, mixer.A_log, mixer.D,
        *(inner_norm.weight for inner_norm in inner), mixer.out_proj.weight, mixer.out_proj.bias,
    ]  # fmt: skip
    if not viewable(*tensors):
        return None
    channels = mixer.d_inner
    inner_views = [weight_view(inner_norm.weight) for inner_norm in inner] or [np.ones(0, np.float32)] * 3
    conv_bias = mixer.conv.bias
    before_conv = (*norm_views(norm), weight_view(mixer.in_proj.weight), weight_view(mixer.in_proj.bias))
    before_ssm = (
        weight_view(mixer.conv.weight).reshape(channels, -1),
        weight_view(conv_bias) if conv_bias is not None else np.zeros(channels, np.float32),
        weight_view(mixer.x_proj_weight),
        as_array(mixer.dt_proj_weight.detach().transpose(1, 2)),  # (g, r, w): a copy, derived
        weight_view(mixer.dt_proj_bias),
        bool(inner),
        *inner_views,
        np.float32(inner[0].eps if inner else 0.0),
        _A_log2e(mixer.A_log),
        weight_view(mixer.D),
    )
    projection = (weight_view(mixer.out_proj.weight), weight_view(mixer.out_proj.bias))
    return DecodeWeights(tensors, derived_from=(mixer.A_log, mixer.dt_proj_weight)), before_conv, before_ssm, projection
