"""Mamba-2 SSD as a fused sequential CPU kernel (numba), forward and backward.

Glossary (as in ssd.py): b batch, l tokens, h heads, p head dim, g groups sharing B and C,
n state size, q checkpoint chunk, w channels of one head in a backward work item (w divides p).

Computes the recurrence of ssd.ssd_ref (Dao & Gu 2024, eq. 2 with a scalar A per head):

    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T      (b, h, n, p) here, fp32
    y_t = h_t C_t + D x_t

The chunked matmul form (ssd.ssd_chunked) trades the recurrence for (q x q) "attention" blocks,
permutation copies and a (b, h, c, q, q) decay tensor; on one CPU core the recurrence itself is
cheaper: one exp per (token, head), and the (n, p) state of a head stays in L1 (16 KiB at
n = p = 64) while its inner loops over p vectorise. The forward keeps only the state entering
every chunk of q tokens; the backward walks the chunks in reverse, recomputes a chunk's states
into a (q + 1, n, w) buffer (L2-sized) and runs the reverse recurrence
dL/dh_{t-1} = exp(dt_t A) dL/dh_t, as ops/selective_scan_cpu.py does for Mamba-1. Heads (and, in
the backward, blocks of w channels) run in parallel; per-block sums of the gradients of dt, A,
D, B and C are added up in torch.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from numba import prange

from .numba_support import Kernel, as_array, exp_nonpositive

CHUNK = 64  # checkpoint interval q
BUFFER_FLOATS = 1 << 19  # the backward's (q + 1, n, w) state buffer: 2 MiB (w = p = 64 at n = 64)


@functools.cache
def backward_block(head_dim: int, d_state: int) -> int:
    """Largest divisor w of the head dim whose (q + 1, n, w) buffer fits BUFFER_FLOATS (at least 1)."""
    limit = max(1, BUFFER_FLOATS // ((CHUNK + 1) * d_state))
    return max(w for w in range(1, min(limit, head_dim) + 1) if head_dim % w == 0)


def _forward(x, dt, A, B, C, D, h0, chunk, y, final_state, checkpoints, keep_checkpoints):
    batch, length, heads, head_dim = x.shape
    d_state = B.shape[3]
    per_group = heads // B.shape[2]
    for job in prange(batch * heads):
        b, head = job // heads, job % heads
        g = head // per_group
        A_h, D_h = A[head], D[head]
        h = h0[b, head].copy()  # (n, p): the inner loops run over p, so they vectorise
        drive = np.empty(head_dim, np.float32)
        out = np.empty(head_dim, np.float32)
        for t in range(length):
            if keep_checkpoints and t % chunk == 0:
                checkpoints[b, t // chunk, head] = h
            dt_t = dt[b, t, head]
            decay = exp_nonpositive(dt_t * A_h)
            x_t = x[b, t, head]
            for c in range(head_dim):
                drive[c] = dt_t * x_t[c]
                out[c] = D_h * x_t[c]
            for k in range(d_state):
                B_k, C_k, h_k = B[b, t, g, k], C[b, t, g, k], h[k]
                for c in range(head_dim):
                    state = decay * h_k[c] + drive[c] * B_k
                    h_k[c] = state
                    out[c] += C_k * state
            y[b, t, head] = out
        final_state[b, head] = h


def _backward(
    x, dt, A, B, C, D, checkpoints, grad_y, grad_final, block, chunk,
    grad_x, grad_dt, grad_A, grad_B, grad_C, grad_D, grad_h0,
):  # fmt: skip
    batch, length, heads, head_dim = x.shape
    d_state = B.shape[3]
    per_group = heads // B.shape[2]
    n_blocks = head_dim // block
    n_chunks = checkpoints.shape[1]
    for job in prange(batch * heads * n_blocks):
        b, rest = job // (heads * n_blocks), job % (heads * n_blocks)
        head, j = rest // n_blocks, rest % n_blocks
        c0, g = j * block, head // per_group
        c1 = c0 + block
        A_h, D_h = A[head], D[head]
        states = np.empty((chunk + 1, d_state, block), np.float32)  # h_{t0-1} .. h_{t1-1} of one chunk
        decays = np.empty(chunk, np.float32)
        grad_h = grad_final[b, head, :, c0:c1].copy()  # dL/dh_t, carried backwards in time
        drive = np.empty(block, np.float32)
        grad_drive_in = np.empty(block, np.float32)  # sum_k dL/dh[k, c] B_k
        carry = np.float32(1.0)  # the decay grad_h still owes (see below)
        grad_A_total = np.float64(0.0)
        grad_D_total = np.float64(0.0)
        for chunk_index in range(n_chunks - 1, -1, -1):
            t0 = chunk_index * chunk
            t1 = min(length, t0 + chunk)
            states[0] = checkpoints[b, chunk_index, head, :, c0:c1]
            for t in range(t0, t1):
                i = t - t0
                dt_t = dt[b, t, head]
                decay = exp_nonpositive(dt_t * A_h)
                decays[i] = decay
                x_t = x[b, t, head, c0:c1]
                for c in range(block):
                    drive[c] = dt_t * x_t[c]
                for k in range(d_state):
                    B_k = B[b, t, g, k]
                    for c in range(block):
                        states[i + 1, k, c] = decay * states[i, k, c] + drive[c] * B_k
            for t in range(t1 - 1, t0 - 1, -1):
                i = t - t0
                dt_t, decay = dt[b, t, head], decays[i]
                x_t, g_y = x[b, t, head, c0:c1], grad_y[b, t, head, c0:c1]
                grad_D_step = np.float32(0.0)
                for c in range(block):
                    drive[c] = dt_t * x_t[c]
                    grad_drive_in[c] = 0.0
                    grad_D_step += g_y[c] * x_t[c]
                grad_decay = np.float32(0.0)  # dL/d exp(dt_t A)
                for k in range(d_state):
                    B_k, C_k = B[b, t, g, k], C[b, t, g, k]
                    h_k, h_prev_k, grad_h_k = states[i + 1, k], states[i, k], grad_h[k]
                    for c in range(block):  # few arrays per loop: LLVM vectorises them without alias checks failing
                        g_h = grad_h_k[c] * carry + g_y[c] * C_k
                        grad_h_k[c] = g_h
                        grad_drive_in[c] += g_h * B_k
                    grad_B_tk = np.float32(0.0)
                    grad_C_tk = np.float32(0.0)
                    for c in range(block):
                        grad_C_tk += g_y[c] * h_k[c]
                        grad_B_tk += grad_h_k[c] * drive[c]
                        grad_decay += grad_h_k[c] * h_prev_k[c]
                    grad_B[b, t, head * n_blocks + j, k] = grad_B_tk
                    grad_C[b, t, head * n_blocks + j, k] = grad_C_tk
                carry = decay  # grad_h holds dL/dh_t; dL/dh_{t-1} = decay * that, applied lazily
                grad_dt_t = grad_decay * decay * A_h
                for c in range(block):
                    grad_x[b, t, head, c0 + c] = g_y[c] * D_h + dt_t * grad_drive_in[c]
                    grad_dt_t += x_t[c] * grad_drive_in[c]
                grad_dt[b, t, head, j] = grad_dt_t
                grad_A_total += grad_decay * decay * dt_t
                grad_D_total += grad_D_step
        for k in range(d_state):
            for c in range(block):
                grad_h[k, c] *= carry
        grad_h0[b, head, :, c0:c1] = grad_h
        grad_A[b, head, j] = grad_A_total
        grad_D[b, head, j] = grad_D_total


_forward_kernel, _backward_kernel = Kernel(_forward), Kernel(_backward)


def strided_view(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a float32 tensor whose last dim is contiguous, without copying (x, B and C
    are column slices of the conv's output); `as_array`'s contiguous copy otherwise (and under autograd)."""
    if t.dtype == torch.float32 and not t.requires_grad and t.stride(-1) == 1:
        return t.numpy()
    return as_array(t)


def _state_last(t: torch.Tensor) -> np.ndarray:
    """(b, h, p, n) -> (b, h, n, p) float32 contiguous: the kernels' state layout."""
    return as_array(t.transpose(-1, -2))


def ssd_forward(x, dt, A, B, C, D, initial_state, keep_checkpoints: bool = False):
    """Run the forward kernel: x (b, l, h, p), dt (b, l, h), A, D (h,), B, C (b, l, g, n),
    initial_state (b, h, p, n). Returns y (b, l, h, p), the final state (b, h, p, n) and the chunk
    checkpoints (b, ceil(l/q), h, n, p), all fp32; the checkpoints are empty unless `keep_checkpoints`."""
    batch, length, heads, head_dim = x.shape
    d_state = B.shape[3]
    y = torch.empty(batch, length, heads, head_dim, dtype=torch.float32)
    final_state = torch.empty(batch, heads, d_state, head_dim, dtype=torch.float32)
    n_chunks = -(-length // CHUNK) if keep_checkpoints else 0
    checkpoints = torch.empty(batch, n_chunks, heads, d_state, head_dim, dtype=torch.float32)
    _forward_kernel(
        x.numel() * d_state,
        strided_view(x),
        as_array(dt),
        as_array(A),
        strided_view(B),
        strided_view(C),
        as_array(D),
        _state_last(initial_state),
        CHUNK,
        y.numpy(),
        final_state.numpy(),
        checkpoints.numpy(),
        keep_checkpoints,
    )
    return y, final_state.transpose(-1, -2), checkpoints


def ssd_backward(x, dt, A, B, C, D, checkpoints, grad_y, grad_final):
    """Gradients of x, dt, A, B, C, D (in their dtypes) and of the initial state (fp32), from the
    forward's checkpoints; grad_y (b, l, h, p), grad_final (b, h, p, n)."""
    batch, length, heads, head_dim = x.shape
    groups, d_state = B.shape[2], B.shape[3]
    block = backward_block(head_dim, d_state)
    n_blocks = head_dim // block
    grad_x = torch.empty(batch, length, heads, head_dim, dtype=torch.float32)
    grad_dt = torch.empty(batch, length, heads, n_blocks, dtype=torch.float32)
    grad_A, grad_D = (torch.empty(batch, heads, n_blocks, dtype=torch.float64) for _ in range(2))
    grad_B, grad_C = (torch.empty(batch, length, heads * n_blocks, d_state, dtype=torch.float32) for _ in range(2))
    grad_h0 = torch.empty(batch, heads, d_state, head_dim, dtype=torch.float32)
    _backward_kernel(
        x.numel() * d_state,
        as_array(x),
        as_array(dt),
        as_array(A),
        as_array(B),
        as_array(C),
        as_array(D),
        as_array(checkpoints),
        as_array(grad_y),
        _state_last(grad_final),
        block,
        CHUNK,
        *(t.numpy() for t in (grad_x, grad_dt, grad_A, grad_B, grad_C, grad_D, grad_h0)),
    )

    def per_group(blocks):  # (b, l, h * n_blocks, n) -> (b, l, g, n): a group's heads are adjacent
        return blocks.view(batch, length, groups, -1, d_state).sum(3)

    return (
        grad_x.to(x.dtype),
        grad_dt.sum(-1).to(dt.dtype),
        grad_A.sum((0, 2)).to(A.dtype),
        per_group(grad_B).to(B.dtype),
        per_group(grad_C).to(C.dtype),
        grad_D.sum((0, 2)).to(D.dtype),
        grad_h0.transpose(-1, -2),
    )
