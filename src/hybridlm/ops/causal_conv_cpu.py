"""Depthwise causal conv (and Mamba's SiLU after it) as a numba kernel, forward and backward.

Glossary: b batch, l new tokens, c channels, k kernel width.

torch's CPU backward of a depthwise `conv1d` is slow at long l (0.48 s for (2, 4096, 512), k = 4,
here, 6x its forward); this kernel walks time once per block of channels, the k taps as 16-lane
vectors (ops/simd.py), reading x in place when it is a column slice (Mamba-2's xBC) and, in the
backward, writing x's gradient the same way (into Mamba-2's in_proj gradient), each element once.
With `silu` the activation is applied in the forward and its input recomputed in the backward, so
the pre-activation is never stored.
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
    """dL/d(pre-activation) g_t, then the gradients by gathering instead of scattering:

        dL/dx_s = sum_j w_j g_{s+k-1-j},   dL/dw_j = sum_t g_t x_{t+j-k+1},   dL/dbias = sum_t g_t

    so each input's gradient is written once, when the last g it needs is known (times before 0 are
    the carried window's: grad_state). grad_x (b, l, c) may be a column slice; grad_x and grad_state
    (b, k-1, c) need no initial value, grad_weight (b, k, c) and grad_bias (b, c) must start at zero."""
    batch, length, channels = x.shape
    width = weight.shape[0]
    n_blocks = -(-channels // block)
    head = min(width - 1, length)  # tokens reading the carried window
    flat = (state.reshape(-1), weight.reshape(-1), grad_out.reshape(-1), grad_state.reshape(-1))
    for job in prange(batch * n_blocks):
        row, first = job // n_blocks, (job % n_blocks) * block
        last = min(channels, first + block)
        whole = last - (last - first) % LANES
        ring = np.zeros(width * block, np.float32)  # g_t at slot t mod k; zero before time 0 and after l - 1
        sums = np.zeros((width + 1) * block, np.float32)  # dL/dweight per tap, then dL/dbias, since a flush
        for t in range(head):
            _backward_step(x, bias, silu, grad_x, flat, ring, sums, row, t, first, whole, width, block, True)
        for t in range(head, length):
            _backward_step(x, bias, silu, grad_x, flat, ring, sums, row, t, first, whole, width, block, False)
            if (t + 1) % FLUSH == 0:
                _flush(sums, grad_weight, grad_bias, row, first, whole)
        _flush(sums, grad_weight, grad_bias, row, first, whole)
        zero = simd.splat(np.float32(0.0))
        for t in range(length, length + width - 1):  # the last k - 1 inputs: the g after time l - 1 are zero
            for c0 in range(first, whole, LANES):
                simd.store(ring, (t % width) * block + c0 - first, zero)
                _emit(x, grad_x, flat, ring, row, t, c0, first, width, block, t < width - 1)
        for c in range(whole, last):
            _backward_channel(
                x, state, weight, bias, silu, grad_out, grad_x, grad_state, grad_weight, grad_bias, row, c
            )


@njit(inline="always")
def _backward_step(x, bias, silu, grad_x, flat, ring, sums, row, t, first, whole, width, block, early):
    """Token t, the block's whole vectors: g_t (through SiLU, its input recomputed), its share of the
    weight and bias sums, then the gradient of the input at t - k + 1, which g_t completes."""
    length, channels = x.shape[1], x.shape[2]
    flat_state, flat_gout = flat[0], flat[2]
    one = simd.splat(np.float32(1.0))
    slot = (t % width) * block
    for c0 in range(first, whole, LANES):
        here = c0 - first
        grad_pre = simd.load(flat_gout, (row * length + t) * channels + c0)
        if silu:  # d silu(p)/dp = s (1 + p (1 - s)), s = sigmoid(p)
            pre = _pre_activation(x, flat, bias, row, t, c0, width, channels, early)
            gate = simd.sigmoid(pre)
            grad_pre = grad_pre * gate * simd.fma(pre, one - gate, one)
        simd.store(ring, slot + here, grad_pre)
        simd.store(sums, width * block + here, simd.load(sums, width * block + here) + grad_pre)
        for j in range(width):
            s = t + j - (width - 1)
            if early and s < 0:
                tap = simd.load(flat_state, (row * (width - 1) + s + width - 1) * channels + c0)
            else:
                tap = simd.load(x, row * (x.strides[0] // 4) + s * (x.strides[1] // 4) + c0)
            simd.store(sums, j * block + here, simd.fma(grad_pre, tap, simd.load(sums, j * block + here)))
        _emit(x, grad_x, flat, ring, row, t, c0, first, width, block, early)


@njit(inline="always")
def _emit(x, grad_x, flat, ring, row, t, c0, first, width, block, early):
    """dL/dx_s = sum_j w_j g_{t-j} for s = t - k + 1 (into the carried window's gradient when s < 0)."""
    channels = x.shape[2]
    flat_weight, flat_gstate = flat[1], flat[3]
    acc = simd.splat(np.float32(0.0))
    for j in range(width):
        slot = (t - j + width) % width
        acc = simd.fma(simd.load(flat_weight, j * channels + c0), simd.load(ring, slot * block + c0 - first), acc)
    s = t - (width - 1)
    if early and s < 0:
        simd.store(flat_gstate, (row * (width - 1) + s + width - 1) * channels + c0, acc)
    else:
        simd.store(grad_x, row * (grad_x.strides[0] // 4) + s * (grad_x.strides[1] // 4) + c0, acc)


@njit(inline="always")
def _flush(sums, grad_weight, grad_bias, row, first, whole):
    width = grad_weight.shape[1]
    block = sums.size // (width + 1)
    for c in range(first, whole):
        for j in range(width):
            grad_weight[row, j, c] += sums[j * block + c - first]
        grad_bias[row, c] += sums[width * block + c - first]
    sums[:] = 0.0


@njit(inline="always")
def _backward_channel(x, state, weight, bias, silu, grad_out, grad_x, grad_state, grad_weight, grad_bias, row, c):
    """Channel c (past the last whole vector) one value at a time, in the same gathering form."""
    length, width = x.shape[1], weight.shape[0]
    ring = np.zeros(width, np.float32)
    for t in range(length + width - 1):
        grad_pre = np.float32(0.0)
        if t < length:
            grad_pre = grad_out[row, t, c]
            if silu:
                pre = _pre_activation_one(x, state, weight, bias, row, t, c)
                gate = sigmoid(pre)
                grad_pre *= gate * (1 + pre * (1 - gate))
            grad_bias[row, c] += grad_pre
            for j in range(width):
                s = t + j - (width - 1)
                grad_weight[row, j, c] += grad_pre * (x[row, s, c] if s >= 0 else state[row, s + width - 1, c])
        ring[t % width] = grad_pre
        acc = np.float32(0.0)
        for j in range(width):
            acc += weight[j, c] * ring[(t - j + width) % width]
        s = t - (width - 1)
        if s >= 0:
            grad_x[row, s, c] = acc
        else:
            grad_state[row, s + width - 1, c] = acc


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


def causal_conv1d_backward(x, weight, bias, state, silu: bool, grad_out, grad_x=None) -> tuple:
    """Gradients of x, weight, bias and state (None for a bias or state that is None), in their dtypes.
    `grad_x`: an fp32 tensor shaped like x with a contiguous last dim (a column slice of a larger
    gradient) to write x's gradient into; a new one if None."""
    batch, _, channels = x.shape
    width = weight.shape[-1]
    grad_x = torch.empty(x.shape, dtype=torch.float32) if grad_x is None else grad_x
    grad_state = torch.empty(batch, width - 1, channels, dtype=torch.float32)
    grad_weight = torch.zeros(batch, width, channels, dtype=torch.float64)
    grad_bias = torch.zeros(batch, channels, dtype=torch.float64)
    _backward_kernel(
        x.numel() * width,
        *_operands(x, weight, bias, state),
        silu,
        as_array(grad_out),
        BLOCK,
        *(t.numpy() for t in (grad_x, grad_state, grad_weight, grad_bias)),
    )
    return (
        grad_x.to(x.dtype),
        grad_weight.sum(0).t().reshape(weight.shape).to(weight.dtype),
        None if bias is None else grad_bias.sum(0).to(bias.dtype),
        None if state is None else grad_state.transpose(1, 2).to(state.dtype),
    )


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
        return (*causal_conv1d_backward(x, weight, bias, state, ctx.silu, grad_out), None)
