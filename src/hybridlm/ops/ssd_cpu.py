"""Mamba-2 SSD as a fused sequential CPU kernel (numba), forward and backward.

Glossary (as in ssd.py): b batch, l tokens, h heads, p head dim, g groups sharing B and C,
n state size, q checkpoint chunk.

Computes the recurrence of ssd.ssd_ref (Dao & Gu 2024, eq. 2 with a scalar A per head):

    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T      (b, h, n, p) here, fp32
    y_t = h_t C_t + D x_t

The chunked matmul form (ssd.ssd_chunked) trades the recurrence for (q x q) "attention" blocks,
permutation copies and a (b, h, c, q, q) decay tensor; on one CPU core the recurrence itself is
cheaper: one exp per (token, head) and 3 vector instructions per 16 state elements. The state is
walked in register tiles of ROWS rows k by 16 channels c (ops/simd.py vectors: one zmm each on
AVX-512): a tile stays in registers for a whole chunk of q tokens, so per token it only reads
dt_t x_t, B_t, C_t and adds its share into y_t. n and p are padded to whole vectors with zeros.

The forward keeps the state entering every chunk (and the final state) as checkpoints; the
backward (ops/ssd_backward_cpu.py) walks the chunks in reverse from them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numba import prange

from . import simd
from .numba_support import Kernel, as_array, copy_into, exp_nonpositive, strided_view
from .simd import LANES
from .ssd_backward_cpu import backward_kernel

CHUNK = 64  # checkpoint interval q
ROWS = 8  # state rows k in one register tile of ROWS x 16 channels


def padded_shape(d_state: int, head_dim: int) -> tuple[int, int]:
    """(n, p) rounded up to the tiles' sizes: n to whole 16-lane vectors, p to pairs of them (zero
    rows and channels stay zero)."""
    return -(-d_state // LANES) * LANES, -(-head_dim // (2 * LANES)) * 2 * LANES


def _forward(x, dt, A, B, C, D, h0, chunk, y, final_state, checkpoints, keep_checkpoints):
    batch, length, heads, head_dim = x.shape
    groups, d_state = B.shape[2], B.shape[3]
    per_group = heads // groups
    flat_y = y.reshape(-1)
    x_b, x_t, x_h = x.strides[0] // 4, x.strides[1] // 4, x.strides[2] // 4
    B_b, B_t, B_g = B.strides[0] // 4, B.strides[1] // 4, B.strides[2] // 4  # broadcast loads by flat offset
    C_b, C_t, C_g = C.strides[0] // 4, C.strides[1] // 4, C.strides[2] // 4
    for job in prange(batch * heads):
        b, head = job // heads, job % heads
        g = head // per_group
        A_h, D_h = A[head], D[head]
        h = h0[b, head].copy()  # (n, p)
        flat_h = h.reshape(-1)
        decays = np.empty(chunk, np.float32)
        drives = np.empty(chunk * head_dim, np.float32)  # dt_t x_t of the chunk's tokens
        for t0 in range(0, length, chunk):
            steps = min(chunk, length - t0)
            if keep_checkpoints:
                copy_into(checkpoints[b, t0 // chunk, head], h)
            for i in range(steps):
                t = t0 + i
                dt_t = dt[b, t, head]
                decays[i] = exp_nonpositive(dt_t * A_h)
                row, x_row = ((b * length + t) * heads + head) * head_dim, b * x_b + t * x_t + head * x_h
                for c0 in range(0, head_dim, LANES):
                    x_c = simd.load(x, x_row + c0)  # x may be a strided view: offsets from its strides
                    simd.store(drives, i * head_dim + c0, simd.splat(dt_t) * x_c)
                    simd.store(flat_y, row + c0, simd.splat(D_h) * x_c)
            for c0 in range(0, head_dim, LANES):
                for k0 in range(0, d_state, ROWS):
                    at = k0 * head_dim + c0
                    h_0, h_1 = simd.load(flat_h, at), simd.load(flat_h, at + head_dim)
                    h_2, h_3 = simd.load(flat_h, at + 2 * head_dim), simd.load(flat_h, at + 3 * head_dim)
                    h_4, h_5 = simd.load(flat_h, at + 4 * head_dim), simd.load(flat_h, at + 5 * head_dim)
                    h_6, h_7 = simd.load(flat_h, at + 6 * head_dim), simd.load(flat_h, at + 7 * head_dim)
                    for i in range(steps):
                        t = t0 + i
                        decay, drive = simd.splat(decays[i]), simd.load(drives, i * head_dim + c0)
                        at_B, at_C = b * B_b + t * B_t + g * B_g + k0, b * C_b + t * C_t + g * C_g + k0
                        h_0 = simd.fma(drive, simd.broadcast(B, at_B), h_0 * decay)
                        h_1 = simd.fma(drive, simd.broadcast(B, at_B + 1), h_1 * decay)
                        h_2 = simd.fma(drive, simd.broadcast(B, at_B + 2), h_2 * decay)
                        h_3 = simd.fma(drive, simd.broadcast(B, at_B + 3), h_3 * decay)
                        h_4 = simd.fma(drive, simd.broadcast(B, at_B + 4), h_4 * decay)
                        h_5 = simd.fma(drive, simd.broadcast(B, at_B + 5), h_5 * decay)
                        h_6 = simd.fma(drive, simd.broadcast(B, at_B + 6), h_6 * decay)
                        h_7 = simd.fma(drive, simd.broadcast(B, at_B + 7), h_7 * decay)
                        even = simd.fma(simd.broadcast(C, at_C + 2), h_2, simd.broadcast(C, at_C) * h_0)
                        odd = simd.fma(simd.broadcast(C, at_C + 3), h_3, simd.broadcast(C, at_C + 1) * h_1)
                        even = simd.fma(
                            simd.broadcast(C, at_C + 6), h_6, simd.fma(simd.broadcast(C, at_C + 4), h_4, even)
                        )
                        odd = simd.fma(
                            simd.broadcast(C, at_C + 7), h_7, simd.fma(simd.broadcast(C, at_C + 5), h_5, odd)
                        )
                        row = ((b * length + t) * heads + head) * head_dim + c0
                        simd.store(flat_y, row, simd.load(flat_y, row) + even + odd)
                    simd.store(flat_h, at, h_0)
                    simd.store(flat_h, at + head_dim, h_1)
                    simd.store(flat_h, at + 2 * head_dim, h_2)
                    simd.store(flat_h, at + 3 * head_dim, h_3)
                    simd.store(flat_h, at + 4 * head_dim, h_4)
                    simd.store(flat_h, at + 5 * head_dim, h_5)
                    simd.store(flat_h, at + 6 * head_dim, h_6)
                    simd.store(flat_h, at + 7 * head_dim, h_7)
        copy_into(final_state[b, head], h)
        if keep_checkpoints:
            copy_into(checkpoints[b, -1, head], h)


_forward_kernel = Kernel(_forward)


def _pad_last(t: torch.Tensor, size: int) -> torch.Tensor:
    """t with zeros appended to its last dim up to `size` (t itself when it is that wide)."""
    return t if t.shape[-1] == size else F.pad(t.detach().float(), (0, size - t.shape[-1]))


def _state_last(t: torch.Tensor, d_state: int, head_dim: int) -> np.ndarray:
    """(b, h, p, n) -> (b, h, n', p') float32 contiguous, zero-padded: the kernels' state layout."""
    return as_array(_pad_last(_pad_last(t, d_state).transpose(-1, -2), head_dim))


def ssd_forward(x, dt, A, B, C, D, initial_state, keep_checkpoints: bool = False):
    """Run the forward kernel: x (b, l, h, p), dt (b, l, h), A, D (h,), B, C (b, l, g, n),
    initial_state (b, h, p, n). Returns y (b, l, h, p), the final state (b, h, p, n) and the chunk
    checkpoints (b, ceil(l/q) + 1, h, n', p') (`padded_shape`; the last one is the final state), all
    fp32; the checkpoints are empty unless `keep_checkpoints`."""
    batch, length, heads, head_dim = x.shape
    d_state = B.shape[3]
    wide_n, wide_p = padded_shape(d_state, head_dim)
    y = torch.empty(batch, length, heads, wide_p, dtype=torch.float32)
    final_state = torch.empty(batch, heads, wide_n, wide_p, dtype=torch.float32)
    n_chunks = -(-length // CHUNK) + 1 if keep_checkpoints else 0
    checkpoints = torch.empty(batch, n_chunks, heads, wide_n, wide_p, dtype=torch.float32)
    _forward_kernel(
        x.numel() * d_state,
        strided_view(_pad_last(x, wide_p)),
        as_array(dt),
        as_array(A),
        strided_view(_pad_last(B, wide_n)),
        strided_view(_pad_last(C, wide_n)),
        as_array(D),
        _state_last(initial_state, wide_n, wide_p),
        CHUNK,
        y.numpy(),
        final_state.numpy(),
        checkpoints.numpy(),
        keep_checkpoints,
    )
    if wide_p != head_dim:
        y = y[..., :head_dim].contiguous()
    return y, final_state[:, :, :d_state, :head_dim].transpose(-1, -2), checkpoints


def ssd_backward(x, dt, A, B, C, D, checkpoints, grad_y, grad_final, grad_x=None, grad_B=None, grad_C=None):
    """Gradients of x, dt, A, B, C, D (in their dtypes) and of the initial state (fp32), from the
    forward's checkpoints; grad_y (b, l, h, p), grad_final (b, h, p, n). `grad_x` (b, l, h, p) and
    `grad_B`, `grad_C` (b, l, g, n): fp32 tensors with a contiguous last dim (column slices of one
    buffer, as x, B and C are of the conv's output) to write those gradients into; new ones if None."""
    batch, length, heads, head_dim = x.shape
    d_state = B.shape[3]
    wide_n, wide_p = padded_shape(d_state, head_dim)
    into_x = grad_x is not None and wide_p == head_dim
    wide_grad_x = grad_x if into_x else torch.empty(batch, length, heads, wide_p, dtype=torch.float32)
    grad_B = torch.empty(B.shape, dtype=torch.float32) if grad_B is None else grad_B
    grad_C = torch.empty(C.shape, dtype=torch.float32) if grad_C is None else grad_C
    grad_dt = torch.empty(batch, length, heads, dtype=torch.float32)
    grad_A, grad_D = (torch.empty(batch, heads, dtype=torch.float64) for _ in range(2))
    head_grad_B, head_grad_C = (torch.empty(batch, length, heads, wide_n, dtype=torch.float32) for _ in range(2))
    grad_h0 = torch.empty(batch, heads, wide_n, wide_p, dtype=torch.float32)
    backward_kernel(
        x.numel() * d_state,
        strided_view(_pad_last(x, wide_p)),
        as_array(dt),
        as_array(A),
        strided_view(_pad_last(B, wide_n)),
        strided_view(_pad_last(C, wide_n)),
        as_array(D),
        as_array(checkpoints),
        as_array(_pad_last(grad_y, wide_p)),
        _state_last(grad_final, wide_n, wide_p),
        CHUNK,
        *(t.numpy() for t in (wide_grad_x, grad_dt, grad_A, head_grad_B, head_grad_C, grad_D, grad_h0, grad_B, grad_C)),
    )
    if grad_x is None:
        grad_x = wide_grad_x[..., :head_dim]
    elif not into_x:
        grad_x.copy_(wide_grad_x[..., :head_dim])
    return (
        grad_x.to(x.dtype),
        grad_dt.to(dt.dtype),
        grad_A.sum(0).to(A.dtype),
        grad_B.to(B.dtype),
        grad_C.to(C.dtype),
        grad_D.sum(0).to(D.dtype),
        grad_h0[:, :, :d_state, :head_dim].transpose(-1, -2),
    )
