"""Depthwise causal conv (and Mamba's SiLU after it) as a numba kernel, forward and backward.

Glossary: b batch, l new tokens, c channels, k kernel width.

torch's CPU backward of a depthwise `conv1d` is slow at long l (0.48 s for (2, 4096, 512), k = 4,
here, 6x its forward); this kernel walks time once per block of channels, the k taps as 16-lane
vectors (ops/simd.py), reading x in place when it is a column slice (Mamba-2's xBC). With `silu`
the activation is applied in the forward and its input recomputed in the backward, so the
pre-activation is never stored.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from . import simd
from .numba_support import Kernel, as_array, sigmoid, strided_view
from .simd import LANES


@njit(inline="always", fastmath=True, error_model="numpy")
def conv_token(conv_weight, conv_bias, conv_state, row, c, new):
    """Channel c of row `row` of the depthwise causal conv for one new input, the decoding step's form:
    its k - 1 kept inputs (conv_state (b, channels, k - 1)) and `new` against conv_weight (channels, k),
    plus the bias; then the window shifts to end at `new`."""
    width = conv_weight.shape[1]
    acc = conv_bias[c] + conv_weight[c, width - 1] * new
    for j in range(width - 1):
        acc += conv_weight[c, j] * conv_state[row, c, j]
    for j in range(width - 2):
        conv_state[row, c, j] = conv_state[row, c, j + 1]
    if width > 1:
        conv_state[row, c, width - 2] = new
    return acc


BLOCK = 256  # channels per work item
FLUSH = 256  # steps between adding the float32 weight-gradient sums into the float64 totals


@njit(inline="always")
def _pre_activation(x, state, weight, bias, row, t, c0, x_row, x_step, width, channels, early):
    """bias + sum_j w_j x_{t+j-k+1} for 16 channels from c0; with `early` (t < k - 1) the inputs
    before time 0 come from the carried window. Callers split their loops at t = k - 1: a branch
    choosing between two vector loads made LLVM's code for the whole loop 10x slower."""
    acc = simd.load(bias, c0)
    for j in range(width):
        s = t + j - (width - 1)
        if early and s < 0:
            tap = simd.load(state, (row * (width - 1) + s + width - 1) * channels + c0)
        else:
            tap = simd.load(x, row * x_row + s * x_step + c0)
        acc = simd.fma(simd.load(weight, j * channels + c0), tap, acc)
    return acc


def _forward(x, state, weight, bias, silu, block, out):
    """x (b, l, c), its rows possibly strided; state (b, k-1, c), weight (k, c), bias (c,) -> out (b, l, c).
    One job per (batch row, block of channels)."""
    batch, length, channels = x.shape
    n_blocks = -(-channels // block)
    head = min(weight.shape[0] - 1, length)  # tokens reading the carried window
    flat = (state.reshape(-1), weight.reshape(-1), out.reshape(-1))  # flat views for the vector loads
    for job in prange(batch * n_blocks):
        row, first = job // n_blocks, (job % n_blocks) * block
        for t in range(head):
            _forward_token(x, state, weight, bias, silu, out, flat, row, t, first, block, True)
        for t in range(head, length):
            _forward_token(x, state, weight, bias, silu, out, flat, row, t, first, block, False)


@njit(inline="always")
def _forward_token(x, state, weight, bias, silu, out, flat, row, t, first, block, early):
    """Token t of one block: its whole vectors of 16 channels, then the rest one by one."""
    length, channels, width = x.shape[1], x.shape[2], weight.shape[0]
    last = min(channels, first + block)
    whole = last - (last - first) % LANES
    for c0 in range(first, whole, LANES):
        acc = _pre_activation(x, flat, bias, row, t, c0, width, channels, early)
        simd.store(flat[2], (row * length + t) * channels + c0, simd.silu(acc) if silu else acc)
    for c in range(whole, last):
        acc = _pre_activation_one(x, state, weight, bias, row, t, c)
        out[row, t, c] = acc * sigmoid(acc) if silu else acc


@njit(inline="always")
def _pre_activation(x, flat, bias, row, t, c0, width, channels, early):
    """bias + sum_j w_j x_{t+j-k+1} for 16 channels from c0; with `early` (t < k - 1, a constant at
    each call) the inputs before time 0 come from the carried window. A branch choosing between
    the two vector loads at every token made LLVM's code for the whole loop 10x slower."""
    acc = simd.load(bias, c0)
    for j in range(width):
        s = t + j - (width - 1)
        if early and s < 0:
            tap = simd.load(flat[0], (row * (width - 1) + s + width - 1) * channels + c0)
        else:
            tap = simd.load(x, row * (x.strides[0] // 4) + s * (x.strides[1] // 4) + c0)
        acc = simd.fma(simd.load(flat[1], j * channels + c0), tap, acc)
    return acc


@njit(inline="always")
def _pre_activation_one(x, state, weight, bias, row, t, c):
    width = weight.shape[0]
    acc = bias[c]
    for j in range(width):
        s = t + j - (width - 1)
        acc += weight[j, c] * (x[row, s, c] if s >= 0 else state[row, s + width - 1, c])
    return acc


def _backward(x, state, weight, bias, silu, grad_out, block, grad_x, grad_state, grad_weight, grad_bias):
    """Scatters dL/d(pre-activation) back over the k taps; grad_x, grad_state, grad_weight (b, k, c)
    and grad_bias (b, c) must start at zero."""
    batch, length, channels = x.shape
    width = weight.shape[0]
    n_blocks = -(-channels // block)
    head = min(width - 1, length)
    flat = (state.reshape(-1), weight.reshape(-1), grad_out.reshape(-1), grad_x.reshape(-1), grad_state.reshape(-1))
    for job in prange(batch * n_blocks):
        row, first = job // n_blocks, (job % n_blocks) * block
        last = min(channels, first + block)
        sums = np.zeros((width + 1) * block, np.float32)  # dL/dweight per tap, then dL/dbias, since a flush
        for t in range(length):
            if t < head:
                _backward_token(
                    x, state, weight, bias, silu, grad_out, grad_x, grad_state, flat, sums, row, t, first, block, True
                )
            else:
                _backward_token(
                    x, state, weight, bias, silu, grad_out, grad_x, grad_state, flat, sums, row, t, first, block, False
                )
            if (t + 1) % FLUSH == 0 or t == length - 1:
                for c in range(first, last):
                    for j in range(width):
                        grad_weight[row, j, c] += sums[j * block + c - first]
                    grad_bias[row, c] += sums[width * block + c - first]
                sums[:] = 0.0


@njit(inline="always")
def _backward_token(
    x, state, weight, bias, silu, grad_out, grad_x, grad_state, flat, sums, row, t, first, block, early
):
    """Token t of one block: dL/d(pre-activation), then its share of every gradient."""
    length, channels = x.shape[1], x.shape[2]
    width = weight.shape[0]
    last = min(channels, first + block)
    whole = last - (last - first) % LANES
    flat_state, flat_weight, flat_gout, flat_gx, flat_gstate = flat
    one = simd.splat(np.float32(1.0))
    for c0 in range(first, whole, LANES):
        grad_pre = simd.load(flat_gout, (row * length + t) * channels + c0)
        if silu:  # recompute the pre-activation: d silu(p)/dp = s (1 + p (1 - s)), s = sigmoid(p)
            pre = _pre_activation(x, flat, bias, row, t, c0, width, channels, early)
            gate = simd.sigmoid(pre)
            grad_pre = grad_pre * gate * simd.fma(pre, one - gate, one)
        here = c0 - first
        simd.store(sums, width * block + here, simd.load(sums, width * block + here) + grad_pre)
        for j in range(width):
            s = t + j - (width - 1)
            w_j = simd.load(flat_weight, j * channels + c0)
            if early and s < 0:
                at = (row * (width - 1) + s + width - 1) * channels + c0
                tap = simd.load(flat_state, at)
                simd.store(flat_gstate, at, simd.fma(w_j, grad_pre, simd.load(flat_gstate, at)))
            else:
                at = (row * length + s) * channels + c0
                tap = simd.load(x, row * (x.strides[0] // 4) + s * (x.strides[1] // 4) + c0)
                simd.store(flat_gx, at, simd.fma(w_j, grad_pre, simd.load(flat_gx, at)))
            simd.store(sums, j * block + here, simd.fma(grad_pre, tap, simd.load(sums, j * block + here)))
    for c in range(whole, last):
        grad_pre = grad_out[row, t, c]
        if silu:
            pre = _pre_activation_one(x, state, weight, bias, row, t, c)
            gate = sigmoid(pre)
            grad_pre *= gate * (1 + pre * (1 - gate))
        sums[width * block + c - first] += grad_pre
        for j in range(width):
            s = t + j - (width - 1)
            if s >= 0:
                sums[j * block + c - first] += grad_pre * x[row, s, c]
                grad_x[row, s, c] += weight[j, c] * grad_pre
            else:
                sums[j * block + c - first] += grad_pre * state[row, s + width - 1, c]
                grad_state[row, s + width - 1, c] += weight[j, c] * grad_pre


_forward_kernel, _backward_kernel = Kernel(_forward), Kernel(_backward)


def _operands(x, weight, bias, state):
    """Kernel layouts: x (b, l, c), state (b, k-1, c), weight (k, c), bias (c,)."""
    channels, width = weight.shape[0], weight.shape[-1]
    if state is None:
        state = x.new_zeros(x.shape[0], channels, width - 1)
    if bias is None:
        bias = x.new_zeros(channels)
    weight_taps = as_array(weight.reshape(channels, width).t())
    return strided_view(x), as_array(state.transpose(1, 2)), weight_taps, as_array(bias)


def causal_conv1d_forward(x, weight, bias=None, state=None, silu: bool = False) -> torch.Tensor:
    """Same contract as `causal_conv1d_ref`, on CPU tensors; returns fp32."""
    out = torch.empty(x.shape, dtype=torch.float32)
    _forward_kernel(x.numel() * weight.shape[-1], *_operands(x, weight, bias, state), silu, BLOCK, out.numpy())
    return out


class CausalConv1dFunction(torch.autograd.Function):
    """Autograd wrapper: x (b, l, c), weight (c, 1, k), bias (c,) or None, state (b, c, k-1) or None."""

    @staticmethod
    def forward(ctx, x, weight, bias, state, silu):
        ctx.save_for_backward(x, weight, bias, state)
        ctx.silu = silu
        return causal_conv1d_forward(x, weight, bias, state, silu).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, state = ctx.saved_tensors
        batch, _, channels = x.shape
        width = weight.shape[-1]
        grad_x = torch.zeros(x.shape, dtype=torch.float32)
        grad_state = torch.zeros(batch, width - 1, channels, dtype=torch.float32)
        grad_weight = torch.zeros(batch, width, channels, dtype=torch.float64)
        grad_bias = torch.zeros(batch, channels, dtype=torch.float64)
        _backward_kernel(
            x.numel() * width,
            *_operands(x, weight, bias, state),
            ctx.silu,
            as_array(grad_out),
            BLOCK,
            *(t.numpy() for t in (grad_x, grad_state, grad_weight, grad_bias)),
        )
        return (
            grad_x.to(x.dtype),
            grad_weight.sum(0).t().reshape(weight.shape).to(weight.dtype),
            None if bias is None else grad_bias.sum(0).to(bias.dtype),
            None if state is None else grad_state.transpose(1, 2).to(state.dtype),
            None,
        )
