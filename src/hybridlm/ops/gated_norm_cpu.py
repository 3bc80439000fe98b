"""Mamba-2's gated RMSNorm as a fused CPU kernel (numba), forward and backward.

Glossary: r rows (batch x tokens), d channels (d_in), g groups of w = d / g channels, q rows per
work item. Per row and group (Mamba-2 paper, section 7; norm_before_gate=False):

    v     = y * SiLU(z)
    out   = v * rsqrt(mean_w(v^2) + eps) * weight

In torch this is about eight elementwise passes over (r, d) forward and as many backward; here
each direction is one pass per row, in 16-lane vectors (ops/simd.py; the channels of a group past
the last whole vector one by one), reading y and z in place when they are column slices:

    dv = s (go w - v s^2 mean_w(go w v)),  s = rsqrt(mean_w(v^2) + eps)
    dy = dv SiLU(z),  dz = dv y sigma(z) (1 + z (1 - sigma(z))),  dweight = sum_rows go v s
"""

from __future__ import annotations

import numpy as np
import torch
from numba import prange

from . import simd
from .numba_support import Kernel, as_array, sigmoid, strided_view
from .simd import LANES

ROWS = 64  # rows per work item; the weight's gradient is summed per item, then over items in torch


def _forward(y, z, weight, groups, eps, out):
    rows, channels = y.shape
    width = channels // groups
    whole = width - width % LANES  # channels of a group in whole vectors; the rest one by one
    y_row, z_row = y.strides[0] // 4, z.strides[0] // 4  # y and z may be column slices
    flat_out = out.reshape(-1)
    for row in prange(rows):
        for g in range(groups):
            c0 = g * width
            at_y, at_z, at_out = row * y_row + c0, row * z_row + c0, row * channels + c0
            squares = simd.splat(np.float32(0.0))
            for c in range(0, whole, LANES):
                v = simd.load(y, at_y + c) * simd.silu(simd.load(z, at_z + c))
                simd.store(flat_out, at_out + c, v)
                squares = simd.fma(v, v, squares)
            total = simd.total(squares)
            for c in range(c0 + whole, c0 + width):
                v = y[row, c] * z[row, c] * sigmoid(z[row, c])
                out[row, c] = v
                total += v * v
            scale = np.float32(1.0) / np.sqrt(total / width + eps)
            for c in range(0, whole, LANES):
                at = at_out + c
                simd.store(flat_out, at, simd.load(flat_out, at) * simd.splat(scale) * simd.load(weight, c0 + c))
            for c in range(c0 + whole, c0 + width):
                out[row, c] = out[row, c] * scale * weight[c]


def _backward(y, z, weight, groups, eps, grad_out, grad_y, grad_z, grad_weight):
    rows, channels = y.shape
    width = channels // groups
    whole = width - width % LANES
    y_row, z_row = y.strides[0] // 4, z.strides[0] // 4
    gy_row, gz_row = grad_y.strides[0] // 4, grad_z.strides[0] // 4  # grad_z may be a column slice too
    flat_gout = grad_out.reshape(-1)
    one = simd.splat(np.float32(1.0))
    for item in prange(grad_weight.shape[0]):
        gated = np.empty(width, np.float32)
        gates = np.empty(width, np.float32)
        flat_gw = grad_weight[item]
        for c in range(channels):
            flat_gw[c] = 0.0
        for row in range(item * ROWS, min(rows, (item + 1) * ROWS)):
            for g in range(groups):
                c0 = g * width
                at_y, at_z, at_out = row * y_row + c0, row * z_row + c0, row * channels + c0
                squares, dots = simd.splat(np.float32(0.0)), simd.splat(np.float32(0.0))
                for c in range(0, whole, LANES):
                    z_c = simd.load(z, at_z + c)
                    gate = simd.sigmoid(z_c)
                    v = simd.load(y, at_y + c) * z_c * gate
                    simd.store(gates, c, gate)
                    simd.store(gated, c, v)
                    squares = simd.fma(v, v, squares)
                    dots = simd.fma(simd.load(flat_gout, at_out + c) * simd.load(weight, c0 + c), v, dots)
                total, dot = simd.total(squares), simd.total(dots)
                for i in range(whole, width):
                    gate = sigmoid(z[row, c0 + i])
                    gates[i] = gate
                    v = y[row, c0 + i] * z[row, c0 + i] * gate
                    gated[i] = v
                    total += v * v
                    dot += grad_out[row, c0 + i] * weight[c0 + i] * v
                scale = np.float32(1.0) / np.sqrt(total / width + eps)
                correction = scale * scale * dot / width
                for c in range(0, whole, LANES):
                    g_out, v, gate = simd.load(flat_gout, at_out + c), simd.load(gated, c), simd.load(gates, c)
                    z_c, y_c = simd.load(z, at_z + c), simd.load(y, at_y + c)
                    simd.store(flat_gw, c0 + c, simd.fma(g_out * v, simd.splat(scale), simd.load(flat_gw, c0 + c)))
                    grad_v = simd.splat(scale) * (g_out * simd.load(weight, c0 + c) - v * simd.splat(correction))
                    simd.store(grad_y, row * gy_row + c0 + c, grad_v * z_c * gate)
                    simd.store(grad_z, row * gz_row + c0 + c, grad_v * y_c * gate * simd.fma(z_c, one - gate, one))
                for i in range(whole, width):
                    c = c0 + i
                    flat_gw[c] += grad_out[row, c] * gated[i] * scale
                    grad_v = scale * (grad_out[row, c] * weight[c] - gated[i] * correction)
                    gate, z_c = gates[i], z[row, c]
                    grad_y[row, c] = grad_v * z_c * gate
                    grad_z[row, c] = grad_v * y[row, c] * gate * (1 + z_c * (1 - gate))


_forward_kernel, _backward_kernel = Kernel(_forward), Kernel(_backward)


def gated_rms_norm_forward(y, z, weight, groups: int, eps: float) -> torch.Tensor:
    """y, z (..., d), weight (d,) -> out (..., d) fp32."""
    out = torch.empty(y.shape, dtype=torch.float32)
    channels = y.shape[-1]
    _forward_kernel(
        y.numel(),
        strided_view(y.reshape(-1, channels)),
        strided_view(z.reshape(-1, channels)),  # z: a column slice of in_proj's output
        as_array(weight),
        groups,
        np.float32(eps),
        out.numpy().reshape(-1, channels),
    )
    return out


def gated_rms_norm_backward(y, z, weight, groups: int, eps: float, grad_out, grad_z=None) -> list[torch.Tensor]:
    """Gradients of y, z and weight, each in its input's dtype. `grad_z`: an fp32 tensor shaped like z
    whose last dim is contiguous (a column slice of a larger gradient) to write z's gradient into."""
    channels = y.shape[-1]
    rows = y.numel() // channels if channels else 0
    grad_y = torch.empty(y.shape, dtype=torch.float32)
    grad_z = torch.empty(y.shape, dtype=torch.float32) if grad_z is None else grad_z
    grad_weight = torch.empty(-(-rows // ROWS), channels, dtype=torch.float32)
    _backward_kernel(
        y.numel(),
        strided_view(y.reshape(-1, channels)),
        strided_view(z.reshape(-1, channels)),
        as_array(weight),
        groups,
        np.float32(eps),
        as_array(grad_out.reshape(-1, channels)),
        grad_y.numpy().reshape(-1, channels),
        grad_z.view(-1, channels).numpy(),
        grad_weight.numpy(),
    )
    return [grad_y.to(y.dtype), grad_z.to(z.dtype), grad_weight.sum(0).to(weight.dtype)]
