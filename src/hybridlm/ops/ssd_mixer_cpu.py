"""The Mamba-2 mixer between its two projections as one CPU computation: conv, dt, SSD, gated norm.

Glossary (as in layers/mamba2.py): b batch, l tokens, d_in inner width, h heads, p head dim,
g groups, n state size, k conv width; projected = in_proj(u) (b, l, d_in + (d_in + 2 g n) + h).

    [z, xBC, dt_raw] = projected
    [x, B, C]        = SiLU(causal_conv(xBC))                       ops/causal_conv_cpu.py
    dt               = clamp(softplus(dt_raw + dt_bias), dt_low, dt_high)
    y                = SSD(x, dt, A = -exp(A_log), B, C, D)         ops/ssd_cpu.py, from zero states
    normed           = RMSNorm_g(y * SiLU(z)) * norm_weight         ops/gated_norm_cpu.py

The same kernels as the separate ops, composed so that the backward writes every gradient of
`projected` into one buffer: the gated norm writes dL/dz, the SSD writes dL/dx, dL/dB, dL/dC into
one conv-output gradient, the conv writes dL/dxBC, and dL/d(dt_raw) fills the last h columns. Split
into separate ops, autograd concatenates those pieces twice per step (the conv output's three, then
in_proj's). The training path of a layer without states or padding (layers/mamba2.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .causal_conv_cpu import causal_conv1d_backward, causal_conv1d_forward
from .gated_norm_cpu import gated_rms_norm_backward, gated_rms_norm_forward
from .ssd_cpu import ssd_backward, ssd_forward


def widths(projected: torch.Tensor, conv_weight: torch.Tensor, dt_bias: torch.Tensor, n_groups: int) -> tuple:
    """(d_in, conv channels, heads, head dim p, state size n) from the operands' shapes."""
    conv_dim, heads = conv_weight.shape[0], dt_bias.shape[0]
    d_inner = projected.shape[-1] - conv_dim - heads
    return d_inner, conv_dim, heads, d_inner // heads, (conv_dim - d_inner) // (2 * n_groups)


def _split_conv(conv_out, d_inner, heads, head_dim, n_groups, d_state):
    """x (b, l, h, p), B and C (b, l, g, n): column slices of the conv's output (or its gradient)."""
    batch, length = conv_out.shape[:2]
    x, B, C = conv_out.split([d_inner, n_groups * d_state, n_groups * d_state], dim=-1)
    return (
        x.view(batch, length, heads, head_dim),
        B.view(batch, length, n_groups, d_state),
        C.view(batch, length, n_groups, d_state),
    )


def _pre_dt(dt_raw, dt_bias):
    return dt_raw.float() + dt_bias.float()


def ssd_mixer_forward(
    projected, conv_weight, conv_bias, dt_bias, A_log, D, norm_weight, n_groups, dt_low, dt_high, eps, keep=True
):
    """normed (b, l, d_in), and what the backward reads: the conv's output (b, l, d_in + 2 g n), y
    (b, l, h, p) and the SSD's chunk checkpoints (ssd_cpu.ssd_forward; empty unless `keep`); all fp32."""
    d_inner, conv_dim, heads, head_dim, d_state = widths(projected, conv_weight, dt_bias, n_groups)
    batch, length = projected.shape[:2]
    z, xBC, dt_raw = projected.split([d_inner, conv_dim, heads], dim=-1)
    conv_out = causal_conv1d_forward(xBC, conv_weight, conv_bias, None, True)
    dt = F.softplus(_pre_dt(dt_raw, dt_bias)).clamp(dt_low, dt_high)
    x, B, C = _split_conv(conv_out, d_inner, heads, head_dim, n_groups, d_state)
    zeros = projected.new_zeros(batch, heads, head_dim, d_state, dtype=torch.float32)
    y, _, checkpoints = ssd_forward(x, dt, -torch.exp(A_log.float()), B, C, D, zeros, keep)
    normed = gated_rms_norm_forward(y.view(batch, length, d_inner), z, norm_weight, n_groups, eps)
    return normed, conv_out, y, checkpoints


def ssd_mixer_backward(
    projected, conv_weight, conv_bias, dt_bias, A_log, D, norm_weight, conv_out, y, checkpoints, grad_normed,
    n_groups, dt_low, dt_high, eps,
):  # fmt: skip
    """Gradients of projected (one fp32 buffer), conv_weight, conv_bias (None without one), dt_bias,
    A_log, D and norm_weight, from the forward's saved conv output, y and checkpoints."""
    d_inner, conv_dim, heads, head_dim, d_state = widths(projected, conv_weight, dt_bias, n_groups)
    batch, length = projected.shape[:2]
    z, xBC, dt_raw = projected.split([d_inner, conv_dim, heads], dim=-1)
    grad_projected = torch.empty(projected.shape, dtype=torch.float32)
    grad_z, grad_xBC, grad_dt_raw = grad_projected.split([d_inner, conv_dim, heads], dim=-1)
    grad_y, _, grad_norm_weight = gated_rms_norm_backward(
        y.view(batch, length, d_inner), z, norm_weight, n_groups, eps, grad_normed, grad_z=grad_z
    )
    pre_dt = _pre_dt(dt_raw, dt_bias)
    unclamped = F.softplus(pre_dt)
    dt = unclamped.clamp(dt_low, dt_high)
    A = -torch.exp(A_log.float())
    grad_conv_out = torch.empty(conv_out.shape, dtype=torch.float32)
    grad_x, grad_B, grad_C = _split_conv(grad_conv_out, d_inner, heads, head_dim, n_groups, d_state)
    x, B, C = _split_conv(conv_out, d_inner, heads, head_dim, n_groups, d_state)
    zeros = projected.new_zeros(batch, heads, head_dim, d_state, dtype=torch.float32)
    _, grad_dt, grad_A, _, _, grad_D, _ = ssd_backward(
        x, dt, A, B, C, D, checkpoints, grad_y.view(y.shape), zeros, grad_x=grad_x, grad_B=grad_B, grad_C=grad_C
    )
    _, grad_conv_weight, grad_conv_bias, _ = causal_conv1d_backward(
        xBC, conv_weight, conv_bias, None, True, grad_conv_out, grad_x=grad_xBC
    )
    # softplus' derivative is the sigmoid; clamp passes the gradient where low <= dt <= high (as torch's)
    grad_pre_dt = grad_dt * torch.sigmoid(pre_dt) * ((dt_low <= unclamped) & (unclamped <= dt_high))
    grad_dt_raw.copy_(grad_pre_dt)
    return (
        grad_projected,
        grad_conv_weight,
        grad_conv_bias,
        grad_pre_dt.sum((0, 1)).to(dt_bias.dtype),
        (grad_A * A).to(A_log.dtype),  # dA/dA_log = -exp(A_log) = A
        grad_D.to(D.dtype),
        grad_norm_weight,
    )
