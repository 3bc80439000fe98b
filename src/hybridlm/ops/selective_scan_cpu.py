"""Mamba-1 selective scan as a fused CPU kernel (numba), forward and backward.

Glossary (as in selective_scan.py): b batch, l tokens, d channels (d_inner), n state size,
g groups sharing B and C, q checkpoint chunk, w channels per block (one thread's work item).

Computes, with the skip D and the gate z folded in (Gu & Dao 2023, eq. 2 and Figure 3):

    h_t   = exp(dt_t A) * h_{t-1} + dt_t B_t x_t        (b, d, n), fp32
    y_t   = C_t . h_t + D x_t                          (b, d)
    out_t = y_t * SiLU(z_t)                            (when z is given)

The CPU analogue of mamba_ssm's CUDA kernel: one pass over time per block of channels, the
state block stays in L1, and (b, l, d, n) is never stored. The forward runs on explicit 16-lane
vectors (ops/simd.py: one zmm register on AVX-512, two ymm on AVX2) over 16 channels, loops over
the n states inside, and computes exp(dt A) as 2^(dt A log2 e) with simd.exp2 (11 instructions,
1.6e-7 relative). The backward is numba-vectorised over blocks of w channels and uses
numba_support.exp_nonpositive. The forward keeps only the
state entering every chunk of q steps (l/q of the full states); the backward walks the chunks in
reverse, recomputes the chunk's states into a (q + 1, w, n) buffer and runs the reverse
recurrence dL/dh_{t-1} = exp(dt_t A) * dL/dh_t. Blocks of channels run in parallel. Per-step
gradients of B and C are summed over channels within a block here and over blocks in torch.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from numba import prange

from . import simd
from .numba_support import Kernel, as_array, exp_nonpositive, sigmoid
from .simd import LANES

CHUNK = 64  # checkpoint interval q: the backward's buffers, 2 (q + 1) n w floats, stay in L2


@functools.cache
def channel_block(channels_per_group: int, limit: int = 128) -> int:
    """Largest divisor of the group width <= limit, so every block lies inside one group."""
    return max(w for w in range(1, min(limit, channels_per_group) + 1) if channels_per_group % w == 0)


def _forward(x, dt, A_log2e, B, C, D, z, has_z, h0, chunk, out, final_state, checkpoints, keep_checkpoints):
    """One job per (batch, group, block of 16 channels of the group); B, C flattened, the rest as named.

    Per (t, k) and 16 channels: 15 vector instructions (u = dt A log2(e), 11 for 2^u, the state's
    multiply and FMA, the output's FMA), the state row h[k] read and written in L1. A partial block
    (a group width not a multiple of 16) goes through `staging`, zero past its lanes."""
    batch, length, channels = dt.shape
    d_state, groups = A_log2e.shape[0], B.shape[2]
    per_group = channels // groups
    blocks = -(-per_group // LANES)
    flat_x, flat_dt, flat_z, flat_out = x.ravel(), dt.ravel(), z.ravel(), out.ravel()
    flat_B, flat_C = B.ravel(), C.ravel()
    for job in prange(batch * groups * blocks):
        b, g, j = job // (groups * blocks), job // blocks % groups, job % blocks
        c0 = g * per_group + j * LANES
        lanes = min(LANES, (g + 1) * per_group - c0)
        h = np.zeros(d_state * LANES, np.float32)  # the block's state, row k at k * 16; lanes past `lanes` stay 0
        a = np.zeros(d_state * LANES, np.float32)
        staging = np.zeros(3 * LANES, np.float32)  # dt, x, z of a partial block
        for k in range(d_state):
            for c in range(lanes):
                h[k * LANES + c] = h0[b, k, c0 + c]
                a[k * LANES + c] = A_log2e[k, c0 + c]
        for c in range(lanes):
            staging[c] = D[c0 + c]
        skip = simd.load(staging, 0)
        for t in range(length):
            if keep_checkpoints and t % chunk == 0:
                for k in range(d_state):
                    for c in range(lanes):
                        checkpoints[b, t // chunk, k, c0 + c] = h[k * LANES + c]
            row = (b * length + t) * channels + c0
            if lanes == LANES:
                step, x_t = simd.load(flat_dt, row), simd.load(flat_x, row)
            else:
                for c in range(lanes):
                    staging[c], staging[LANES + c] = flat_dt[row + c], flat_x[row + c]
                step, x_t = simd.load(staging, 0), simd.load(staging, LANES)
            drive = step * x_t
            y = skip * x_t
            bc = ((b * length + t) * groups + g) * d_state
            for k in range(d_state):
                decay = simd.exp2(step * simd.load(a, k * LANES))
                state = simd.fma(decay, simd.load(h, k * LANES), drive * simd.splat(flat_B[bc + k]))
                simd.store(h, k * LANES, state)
                y = simd.fma(simd.splat(flat_C[bc + k]), state, y)
            if has_z:
                if lanes == LANES:
                    gate = simd.load(flat_z, row)
                else:
                    for c in range(lanes):
                        staging[2 * LANES + c] = flat_z[row + c]
                    gate = simd.load(staging, 2 * LANES)
                y = y * simd.silu(gate)
            if lanes == LANES:
                simd.store(flat_out, row, y)
            else:
                simd.store(staging, 0, y)
                for c in range(lanes):
                    flat_out[row + c] = staging[c]
        for k in range(d_state):
            for c in range(lanes):
                final_state[b, k, c0 + c] = h[k * LANES + c]


def _backward(
    x, dt, A_t, B, C, D, z, has_z, checkpoints, grad_out, grad_final, block, chunk,
    grad_x, grad_dt, grad_z, grad_A, grad_B, grad_C, grad_D, grad_h0,
):  # fmt: skip
    batch, length, channels = x.shape
    d_state = A_t.shape[0]
    per_group = channels // B.shape[2]
    n_blocks = channels // block
    n_chunks = checkpoints.shape[1]
    for job in prange(batch * n_blocks):
        b, j = job // n_blocks, job % n_blocks
        c0 = j * block
        c1, g = c0 + block, c0 // per_group
        states = np.empty((chunk + 1, d_state, block), np.float32)  # h_{t0-1} .. h_{t1-1} of one chunk
        decays = np.empty((chunk, d_state, block), np.float32)
        grad_h = grad_final[b, :, c0:c1].copy()  # dL/dh_t, carried backwards in time
        grad_A_total = np.zeros((d_state, block), np.float64)
        grad_D_total = np.zeros(block, np.float64)
        drive = np.empty(block, np.float32)
        g_y = np.empty(block, np.float32)
        g_x = np.empty(block, np.float32)
        g_dt = np.empty(block, np.float32)
        for chunk_index in range(n_chunks - 1, -1, -1):
            t0 = chunk_index * chunk
            t1 = min(length, t0 + chunk)
            states[0] = checkpoints[b, chunk_index, :, c0:c1]
            for t in range(t0, t1):
                i = t - t0
                dt_t, x_t = dt[b, t, c0:c1], x[b, t, c0:c1]
                for c in range(block):
                    drive[c] = dt_t[c] * x_t[c]
                for k in range(d_state):
                    A_k, B_tk = A_t[k, c0:c1], B[b, t, g, k]
                    for c in range(block):
                        decay = exp_nonpositive(dt_t[c] * A_k[c])
                        decays[i, k, c] = decay
                        states[i + 1, k, c] = decay * states[i, k, c] + drive[c] * B_tk
            grad_A_chunk = np.zeros((d_state, block), np.float32)
            grad_D_chunk = np.zeros(block, np.float32)
            for t in range(t1 - 1, t0 - 1, -1):
                i = t - t0
                dt_t, x_t, grad_out_t = dt[b, t, c0:c1], x[b, t, c0:c1], grad_out[b, t, c0:c1]
                for c in range(block):
                    drive[c] = dt_t[c] * x_t[c]
                if has_z:  # d out / d z needs y, recomputed from the states
                    y = np.empty(block, np.float32)
                    for c in range(block):
                        y[c] = D[c0 + c] * x_t[c]
                    for k in range(d_state):
                        C_tk, h_k = C[b, t, g, k], states[i + 1, k]
                        for c in range(block):
                            y[c] += C_tk * h_k[c]
                    z_t = z[b, t, c0:c1]
                    for c in range(block):
                        gate = sigmoid(z_t[c])
                        grad_z[b, t, c0 + c] = grad_out_t[c] * y[c] * gate * (1 + z_t[c] * (1 - gate))
                        g_y[c] = grad_out_t[c] * z_t[c] * gate
                else:
                    g_y[:] = grad_out_t
                for c in range(block):
                    grad_D_chunk[c] += g_y[c] * x_t[c]
                    g_x[c] = g_y[c] * D[c0 + c]
                    g_dt[c] = 0.0
                for k in range(d_state):
                    A_k, B_tk, C_tk = A_t[k, c0:c1], B[b, t, g, k], C[b, t, g, k]
                    h_k, h_prev_k, decay_k = states[i + 1, k], states[i, k], decays[i, k]
                    grad_h_k, grad_A_k = grad_h[k], grad_A_chunk[k]
                    grad_B_tk = np.float32(0.0)
                    grad_C_tk = np.float32(0.0)
                    for c in range(block):
                        grad_C_tk += g_y[c] * h_k[c]
                        g_h = grad_h_k[c] + g_y[c] * C_tk
                        g_decay = g_h * h_prev_k[c] * decay_k[c]  # dL/d(dt A) at (k, c)
                        g_x[c] += g_h * dt_t[c] * B_tk
                        g_dt[c] += g_h * x_t[c] * B_tk + g_decay * A_k[c]
                        grad_B_tk += g_h * drive[c]
                        grad_A_k[c] += g_decay * dt_t[c]
                        grad_h_k[c] = g_h * decay_k[c]
                    grad_B[b, t, j, k] = grad_B_tk
                    grad_C[b, t, j, k] = grad_C_tk
                grad_x[b, t, c0:c1] = g_x
                grad_dt[b, t, c0:c1] = g_dt
            grad_A_total += grad_A_chunk
            grad_D_total += grad_D_chunk
        grad_h0[b, :, c0:c1] = grad_h
        grad_A[b, :, c0:c1] = grad_A_total
        grad_D[b, c0:c1] = grad_D_total


_forward_kernel, _backward_kernel = Kernel(_forward), Kernel(_backward)


def _channels_last(t: torch.Tensor) -> np.ndarray:
    """(..., d, n) -> (..., n, d) float32 contiguous: the kernels' layout for A and states."""
    return as_array(t.transpose(-1, -2))


def selective_scan_forward(x, dt, A, B, C, D, z, initial_state, keep_checkpoints: bool = False):
    """Run the forward kernel on CPU tensors (z may be empty: no gate).

    Returns out (b, l, d), the final state (b, d, n) and the chunk checkpoints (b, ceil(l/q), n, d),
    all fp32; the checkpoints are empty unless `keep_checkpoints`."""
    batch, length, channels = x.shape
    d_state = A.shape[1]
    out = torch.empty(batch, length, channels, dtype=torch.float32)
    final_state = torch.empty(batch, d_state, channels, dtype=torch.float32)
    n_chunks = -(-length // CHUNK) if keep_checkpoints else 0
    checkpoints = torch.empty(batch, n_chunks, d_state, channels, dtype=torch.float32)
    _forward_kernel(
        x.numel() * d_state,
        as_array(x),
        as_array(dt),
        _channels_last(A.detach().double().mul(math.log2(math.e))),  # exp(dt A) = 2^(dt A log2 e)
        as_array(B),
        as_array(C),
        as_array(D),
        as_array(z),
        z.numel() > 0,
        _channels_last(initial_state),
        CHUNK,
        out.numpy(),
        final_state.numpy(),
        checkpoints.numpy(),
        keep_checkpoints,
    )
    return out, final_state.transpose(1, 2), checkpoints


class SelectiveScanFunction(torch.autograd.Function):
    """Autograd wrapper: x, dt, z (b, l, d); A (d, n); B, C (b, l, g, n); D (d,); initial state (b, d, n).

    z may be an empty tensor (no gate). Returns out (b, l, d) and the final state (b, d, n), fp32."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, z, initial_state):
        out, final_state, checkpoints = selective_scan_forward(x, dt, A, B, C, D, z, initial_state, True)
        ctx.save_for_backward(x, dt, A, B, C, D, z, checkpoints)
        ctx.initial_dtype = initial_state.dtype
        return out, final_state

    @staticmethod
    def backward(ctx, grad_out, grad_final):
        x, dt, A, B, C, D, z, checkpoints = ctx.saved_tensors
        batch, length, channels = x.shape
        groups, d_state = B.shape[2], B.shape[3]
        block = channel_block(channels // groups)
        n_blocks = channels // block
        if grad_out is None:
            grad_out = x.new_zeros(x.shape, dtype=torch.float32)
        if grad_final is None:
            grad_final = x.new_zeros(batch, channels, d_state, dtype=torch.float32)
        grad_x, grad_dt = (torch.empty(batch, length, channels, dtype=torch.float32) for _ in range(2))
        grad_z = torch.empty(z.shape, dtype=torch.float32)
        grad_A = torch.empty(batch, d_state, channels, dtype=torch.float64)
        grad_B, grad_C = (torch.empty(batch, length, n_blocks, d_state, dtype=torch.float32) for _ in range(2))
        grad_D = torch.empty(batch, channels, dtype=torch.float64)
        grad_h0 = torch.empty(batch, d_state, channels, dtype=torch.float32)
        _backward_kernel(
            x.numel() * d_state,
            as_array(x),
            as_array(dt),
            _channels_last(A),
            as_array(B),
            as_array(C),
            as_array(D),
            as_array(z),
            z.numel() > 0,
            checkpoints.numpy(),
            as_array(grad_out),
            _channels_last(grad_final),
            block,
            CHUNK,
            *(t.numpy() for t in (grad_x, grad_dt, grad_z, grad_A, grad_B, grad_C, grad_D, grad_h0)),
        )

        def per_group(blocks):  # (b, l, n_blocks, n) -> (b, l, g, n): the blocks of a group are adjacent
            return blocks.view(batch, length, groups, n_blocks // groups, d_state).sum(3)

        return (
            grad_x.to(x.dtype),
            grad_dt.to(dt.dtype),
            grad_A.sum(0).t().to(A.dtype),
            per_group(grad_B).to(B.dtype),
            per_group(grad_C).to(C.dtype),
            grad_D.sum(0).to(D.dtype),
            grad_z.to(z.dtype),
            grad_h0.transpose(1, 2).to(ctx.initial_dtype),
        )
