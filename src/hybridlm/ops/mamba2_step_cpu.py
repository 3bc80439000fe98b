"""One Mamba-2 decoding step, from the in-projection's output to the gated norm's output, in one numba call.

Glossary (layers/mamba2.py): b batch, d_in = h p channels, h heads, p head dim, g groups sharing
B and C, n state size, k conv width, conv_dim = d_in + 2 g n.

Through the layer's torch code one token is ~40 small eager ops (split, conv update, softplus,
the SSD update, the gated RMSNorm), each costing more in dispatch than its arithmetic. This
kernel does the same step, in the same order, for one token:

    [z, xBC, dt] = projected                         (b, d_in + conv_dim + h)
    [x, B, C]    = SiLU(conv(window, xBC))           the window (b, conv_dim, k-1) shifts in place
    dt           = clamp(softplus(dt + dt_bias), dt_limit)
    h            = exp(dt A) h + dt x B^T            (b, h, p, n), in place
    y            = h C + D x
    out          = RMSNorm_g(y * SiLU(z)) * weight   over d_in / g channels per group

so the caller's conv and SSM states are updated in place and only out (b, d_in) is allocated.

`_sublayer_step` runs the whole pre-normed sub-layer for one token in one call, the norm and
both projections included (out_proj(step(in_proj(RMSNorm(u))))), its weights viewed in place
(ops/decode_cpu.py): no torch op per layer, and numba's GEMV streams the in-projection's odd-sized
(d, d_in + conv_dim + h) matrix faster than torch's `linear` does for one row here (27 vs 15 GB/s
at d = 384).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit

from .causal_conv_cpu import conv_token
from .decode_cpu import DecodeWeights, gemv_into, norm_views, rms_norm_into, viewable, weight_view
from .numba_support import as_array, exp_nonpositive, sigmoid, step_arrays


@njit(fastmath=True, error_model="numpy", cache=True)
def _step(
    projected, conv_state, conv_weight, conv_bias, dt_bias, dt_low, dt_high, A, D, norm_weight, eps, ssm_state, out
):
    batch = projected.shape[0]
    heads, head_dim, d_state = ssm_state.shape[1], ssm_state.shape[2], ssm_state.shape[3]
    conv_dim = conv_weight.shape[0]
    d_inner = heads * head_dim
    groups = (conv_dim - d_inner) // (2 * d_state)
    per_group = heads // groups
    group_width = d_inner // groups
    xBC = np.empty(conv_dim, np.float32)
    for row in range(batch):
        for c in range(conv_dim):
            acc = conv_token(conv_weight, conv_bias, conv_state, row, c, projected[row, d_inner + c])
            xBC[c] = acc * sigmoid(acc)
        for head in range(heads):
            raw = projected[row, d_inner + conv_dim + head] + dt_bias[head]
            dt = raw if raw > 20 else math.log1p(math.exp(raw))  # softplus, torch's threshold 20
            dt = min(max(dt, dt_low), dt_high)
            decay = exp_nonpositive(dt * A[head])
            B0 = d_inner + (head // per_group) * d_state
            C0 = B0 + groups * d_state
            B, C = xBC[B0 : B0 + d_state], xBC[C0 : C0 + d_state]  # 1-D views: the k loop vectorises (2.4x)
            for i in range(head_dim):
                c = head * head_dim + i
                drive = dt * xBC[c]
                y = D[head] * xBC[c]
                state = ssm_state[row, head, i]
                for k in range(d_state):
                    h = decay * state[k] + drive * B[k]
                    state[k] = h
                    y += C[k] * h
                z = projected[row, c]
                out[row, c] = y * z * sigmoid(z)
        for g in range(groups):
            c0 = g * group_width
            mean_square = np.float32(0.0)
            for c in range(c0, c0 + group_width):
                mean_square += out[row, c] * out[row, c]
            scale = np.float32(1.0) / np.sqrt(mean_square / group_width + eps)
            for c in range(c0, c0 + group_width):
                out[row, c] = out[row, c] * scale * norm_weight[c]


def _weight_arrays(conv_weight, conv_bias, dt_bias, A_log, D, norm_weight) -> tuple:
    """The step's weights as numpy arrays (views when float32) and A = -exp(A_log), kept between
    tokens by `numba_support.step_arrays`."""

    def build():
        channels = conv_weight.shape[0]
        return (
            as_array(conv_weight.reshape(channels, -1)),
            as_array(conv_bias) if conv_bias is not None else np.zeros(channels, np.float32),
            as_array(dt_bias),
            as_array(-torch.exp(A_log.detach().float())),
            as_array(D),
            as_array(norm_weight),
        )

    return step_arrays(conv_weight, [conv_weight, conv_bias, dt_bias, A_log, D, norm_weight], build)


def mamba2_decode_step(
    projected, conv_state, ssm_state, conv_weight, conv_bias, dt_bias, A_log, D, norm_weight, norm_eps, dt_limit
) -> torch.Tensor:
    """projected (b, 1, d_in + conv_dim + h) -> the gated norm's output (b, 1, d_in) fp32; updates
    conv_state (b, conv_dim, k-1) and ssm_state (b, h, p, n) in place (both float32, contiguous).
    Weights as layers/mamba2.py holds them: conv (conv_dim, 1, k), dt_bias, A_log, D (h,), the
    norm's weight (d_in,)."""
    batch = projected.shape[0]
    heads, head_dim = ssm_state.shape[1], ssm_state.shape[2]
    conv_w, conv_b, dt_bias_a, A, D_a, norm_w = _weight_arrays(conv_weight, conv_bias, dt_bias, A_log, D, norm_weight)
    out = torch.empty(batch, heads * head_dim, dtype=torch.float32)
    _step(
        as_array(projected.reshape(batch, -1)),
        conv_state.numpy(),
        conv_w,
        conv_b,
        dt_bias_a,
        np.float32(dt_limit[0]),
        np.float32(min(dt_limit[1], 3.0e38)),
        A,
        D_a,
        norm_w,
        np.float32(norm_eps),
        ssm_state.numpy(),
        out.numpy(),
    )
    return out.view(batch, 1, heads * head_dim)


@njit(fastmath=True, error_model="numpy", cache=True)
def _sublayer_step(
    u, norm_weight, eps, offset, in_weight, in_bias, conv_state, conv_weight, conv_bias, dt_bias, dt_low, dt_high, A,
    D, gated_weight, gated_eps, ssm_state, out_weight, out_bias, out,
):  # fmt: skip
    batch = u.shape[0]
    normed = np.empty_like(u)
    rms_norm_into(u, norm_weight, eps, offset, normed)
    projected = np.empty((batch, in_weight.shape[0]), np.float32)
    gemv_into(in_weight, in_bias, normed, projected, 0)
    y = np.empty((batch, out_weight.shape[1]), np.float32)
    _step(
        projected, conv_state, conv_weight, conv_bias, dt_bias, dt_low, dt_high, A, D, gated_weight, gated_eps,
        ssm_state, y,
    )  # fmt: skip
    gemv_into(out_weight, out_bias, y, out, 0)


def sublayer_weights(norm, mixer) -> tuple | None:
    """DecodeWeights and the views `_sublayer_step` takes (decode_cpu.conv_ssm_sublayer), for a pre-norm
    and a Mamba-2 mixer whose parameters are float32 and contiguous; None otherwise. A = -exp(A_log)
    is the one copy (it follows A_log's in-place changes through its version)."""
    conv_bias = mixer.conv.bias
    tensors = [
        norm.weight, mixer.in_proj.weight, mixer.in_proj.bias, mixer.conv.weight, conv_bias, mixer.dt_bias,
        mixer.A_log, mixer.D, mixer.norm.weight, mixer.out_proj.weight, mixer.out_proj.bias,
    ]  # fmt: skip
    if not viewable(*tensors):
        return None
    channels = mixer.conv_dim
    dt_low, dt_high = mixer.options.dt_limit
    before_conv = (*norm_views(norm), weight_view(mixer.in_proj.weight), weight_view(mixer.in_proj.bias))
    before_ssm = (
        weight_view(mixer.conv.weight).reshape(channels, -1),
        weight_view(conv_bias) if conv_bias is not None else np.zeros(channels, np.float32),
        weight_view(mixer.dt_bias),
        np.float32(dt_low),
        np.float32(min(dt_high, 3.0e38)),
        as_array(-torch.exp(mixer.A_log.detach().float())),
        weight_view(mixer.D),
        weight_view(mixer.norm.weight),
        np.float32(mixer.norm.eps),
    )
    projection = (weight_view(mixer.out_proj.weight), weight_view(mixer.out_proj.bias))
    return DecodeWeights(tensors, derived_from=(mixer.A_log,)), before_conv, before_ssm, projection
