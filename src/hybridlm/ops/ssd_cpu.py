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

The forward keeps the state entering every chunk. The backward walks the chunks in reverse;
per tile it recomputes the chunk's states (into a (q + 1, ROWS, 16) buffer in L1) and runs
the reverse recurrence dL/dh_{t-1} = exp(dt_t A) dL/dh_t + ..., with

    dL/d(dt x)_t[c] = sum_k dL/dh_t[k, c] B_t[k]     summed over the tile's rows in registers
    dL/dB_t[k] = sum_c dL/dh_t[k, c] (dt x)_t[c],  dL/dC_t[k] = sum_c dL/dy_t[c] h_t[k, c]
    dL/d(dt A)_t = exp(dt_t A) sum_{k,c} dL/dh_t[k, c] h_{t-1}[k, c]

the sums over c kept as 16 lane partial sums per (t, k) and folded 16 at a time (simd.lane_sums).
Heads run in parallel; per-head sums of the gradients of A, D, B and C are added up in torch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange

from . import simd
from .numba_support import Kernel, as_array, exp_nonpositive
from .simd import LANES

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
                checkpoints[b, t0 // chunk, head] = h
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
        final_state[b, head] = h
        if keep_checkpoints:
            checkpoints[b, -1, head] = h


@njit(inline="always")
def _store_rows(array, at, h_0, h_1, h_2, h_3, h_4, h_5, h_6, h_7):
    """array.flat[at + 16 r : at + 16 (r + 1)] = h_r for the tile's ROWS rows r."""
    _store_rows_strided(array, at, LANES, h_0, h_1, h_2, h_3, h_4, h_5, h_6, h_7)


@njit(inline="always")
def _store_rows_strided(array, at, stride, h_0, h_1, h_2, h_3, h_4, h_5, h_6, h_7):
    simd.store(array, at, h_0)
    simd.store(array, at + stride, h_1)
    simd.store(array, at + 2 * stride, h_2)
    simd.store(array, at + 3 * stride, h_3)
    simd.store(array, at + 4 * stride, h_4)
    simd.store(array, at + 5 * stride, h_5)
    simd.store(array, at + 6 * stride, h_6)
    simd.store(array, at + 7 * stride, h_7)


@njit(inline="always")
def _add_one(sums, at, first, product):
    simd.store(sums, at, product if first else simd.load(sums, at) + product)


@njit(inline="always")
def _add_products(sums, at, first, v, h_0, h_1, h_2, h_3, h_4, h_5, h_6, h_7):
    """sums.flat[at + 16 r : ...] (+)= v * h_r for the tile's rows: written by the first channel block."""
    _add_one(sums, at, first, v * h_0)
    _add_one(sums, at + LANES, first, v * h_1)
    _add_one(sums, at + 2 * LANES, first, v * h_2)
    _add_one(sums, at + 3 * LANES, first, v * h_3)
    _add_one(sums, at + 4 * LANES, first, v * h_4)
    _add_one(sums, at + 5 * LANES, first, v * h_5)
    _add_one(sums, at + 6 * LANES, first, v * h_6)
    _add_one(sums, at + 7 * LANES, first, v * h_7)


def _backward(
    x, dt, A, B, C, D, checkpoints, grad_y, grad_final, chunk,
    grad_x, grad_dt, grad_A, grad_B, grad_C, grad_D, grad_h0,
):  # fmt: skip
    batch, length, heads, head_dim = x.shape
    groups, d_state = B.shape[2], B.shape[3]
    per_group = heads // groups
    n_chunks = checkpoints.shape[1] - 1
    flat_gy, flat_gx, flat_gB, flat_gC = grad_y.reshape(-1), grad_x.reshape(-1), grad_B.reshape(-1), grad_C.reshape(-1)
    x_strides = (x.strides[0] // 4, x.strides[1] // 4, x.strides[2] // 4)  # x, B, C may be strided views
    state_strides = (B.strides[0] // 4, B.strides[1] // 4, B.strides[2] // 4)
    for job in prange(batch * heads):
        b, head = job // heads, job % heads
        g = head // per_group
        A_h, D_h = A[head], D[head]
        grad_h = grad_final[b, head].copy()  # dL/dh_t (n, p), carried backwards in time
        flat_grad_h = grad_h.reshape(-1)
        decays = np.empty(chunk, np.float32)
        drives = np.empty(chunk * head_dim, np.float32)
        grad_drives = np.empty(chunk * head_dim, np.float32)  # sum_k dL/dh_t[k, c] B_t[k]
        sums_B = np.empty(chunk * d_state * LANES, np.float32)  # per (t, k): 16 partial sums over c
        sums_C = np.empty(chunk * d_state * LANES, np.float32)
        carry = np.float32(1.0)  # the decay grad_h still owes (see below)
        grad_A_total = np.float64(0.0)
        grad_D_total = np.float64(0.0)
        for chunk_index in range(n_chunks - 1, -1, -1):
            t0 = chunk_index * chunk
            steps = min(chunk, length - t0)
            for i in range(steps):
                dt_t = dt[b, t0 + i, head]
                decays[i] = exp_nonpositive(dt_t * A_h)
                x_row = b * x_strides[0] + (t0 + i) * x_strides[1] + head * x_strides[2]
                for c0 in range(0, head_dim, LANES):
                    simd.store(drives, i * head_dim + c0, simd.splat(dt_t) * simd.load(x, x_row + c0))
                    simd.store(grad_drives, i * head_dim + c0, simd.splat(np.float32(0.0)))
            start = checkpoints[b, chunk_index, head].reshape(-1)
            # <dL/dh_{t1-1}, h_{t1-1}> from outside the chunk, before grad_h moves: see `_decay_gradients`
            outside = carry * _dot(flat_grad_h, checkpoints[b, chunk_index + 1, head].reshape(-1))
            row0, row_stride = ((b * length + t0) * heads + head) * head_dim, heads * head_dim  # grad_y rows
            for c0 in range(0, head_dim, 2 * LANES):
                first = c0 == 0  # the first channel block writes the partial sums, the others add
                for k0 in range(0, d_state, 4):
                    _chunk_grad_C(B, g, b, t0, steps, k0, c0, first, start, drives, decays, flat_gy, sums_C,
                                  row0, row_stride, head_dim, d_state)  # fmt: skip
                    _chunk_grad_h(B, C, g, b, t0, steps, k0, c0, first, flat_grad_h, carry, drives, decays, flat_gy,
                                  grad_drives, sums_B, row0, row_stride, head_dim, d_state)  # fmt: skip
            carry = decays[0]  # grad_h holds dL/dh_{t0}; dL/dh_{t0-1} = decay_{t0} * that, applied lazily
            grad_A_chunk, grad_D_chunk = _chunk_finish(
                x, dt, B, C, x_strides, state_strides, D_h, A_h, flat_gy, b, g, head, t0, steps, outside,
                grad_drives, sums_B, sums_C, flat_gB, flat_gC, flat_gx, grad_dt, head_dim, d_state,
            )  # fmt: skip
            grad_A_total += grad_A_chunk
            grad_D_total += grad_D_chunk
        for i in range(d_state * head_dim):
            flat_grad_h[i] *= carry
        grad_h0[b, head] = grad_h
        grad_A[b, head] = grad_A_total
        grad_D[b, head] = grad_D_total


@njit(inline="always")
def _dot(a, b):
    total = np.float64(0.0)
    for i in range(a.size):
        total += a[i] * np.float64(b[i])
    return total


@njit(inline="always")
def _chunk_grad_C(
    B, g, b, t0, steps, k0, c0, first, start, drives, decays, flat_gy, sums_C, row0, row_stride, head_dim, d_state
):
    """Recompute a (4 rows x 32 channels) tile of the chunk's states from its checkpoint and add
    dL/dC_t[k] = sum_c dL/dy_t[c] h_t[k, c] over the tile's channels into sums_C."""
    at = k0 * head_dim + c0
    h_00, h_01 = simd.load(start, at), simd.load(start, at + LANES)
    h_10, h_11 = simd.load(start, at + head_dim), simd.load(start, at + head_dim + LANES)
    h_20, h_21 = simd.load(start, at + 2 * head_dim), simd.load(start, at + 2 * head_dim + LANES)
    h_30, h_31 = simd.load(start, at + 3 * head_dim), simd.load(start, at + 3 * head_dim + LANES)
    for i in range(steps):
        t = t0 + i
        decay = simd.splat(decays[i])
        d_0, d_1 = simd.load(drives, i * head_dim + c0), simd.load(drives, i * head_dim + c0 + LANES)
        row = row0 + i * row_stride + c0
        g_0, g_1 = simd.load(flat_gy, row), simd.load(flat_gy, row + LANES)
        at_B = b * (B.strides[0] // 4) + t * (B.strides[1] // 4) + g * (B.strides[2] // 4) + k0
        b_0, b_1 = simd.broadcast(B, at_B), simd.broadcast(B, at_B + 1)
        b_2, b_3 = simd.broadcast(B, at_B + 2), simd.broadcast(B, at_B + 3)
        h_00, h_01 = simd.fma(d_0, b_0, h_00 * decay), simd.fma(d_1, b_0, h_01 * decay)
        h_10, h_11 = simd.fma(d_0, b_1, h_10 * decay), simd.fma(d_1, b_1, h_11 * decay)
        h_20, h_21 = simd.fma(d_0, b_2, h_20 * decay), simd.fma(d_1, b_2, h_21 * decay)
        h_30, h_31 = simd.fma(d_0, b_3, h_30 * decay), simd.fma(d_1, b_3, h_31 * decay)
        at_sums = (i * d_state + k0) * LANES
        _add_one(sums_C, at_sums, first, simd.fma(g_1, h_01, g_0 * h_00))
        _add_one(sums_C, at_sums + LANES, first, simd.fma(g_1, h_11, g_0 * h_10))
        _add_one(sums_C, at_sums + 2 * LANES, first, simd.fma(g_1, h_21, g_0 * h_20))
        _add_one(sums_C, at_sums + 3 * LANES, first, simd.fma(g_1, h_31, g_0 * h_30))


@njit(inline="always")
def _chunk_grad_h(
    B, C, g, b, t0, steps, k0, c0, first, flat_grad_h, carry, drives, decays, flat_gy, grad_drives, sums_B,
    row0, row_stride, head_dim, d_state,
):  # fmt: skip
    """The reverse recurrence dL/dh_t = decay_{t+1} dL/dh_{t+1} + C_t dL/dy_t over the chunk for a
    (4 rows x 32 channels) tile of grad_h, adding the tile's share of dL/d(dt x)_t into grad_drives and of
    dL/dB_t[k] = sum_c dL/dh_t[k, c] (dt x)_t[c] into sums_B."""
    at = k0 * head_dim + c0
    l_00, l_01 = simd.load(flat_grad_h, at), simd.load(flat_grad_h, at + LANES)
    l_10, l_11 = simd.load(flat_grad_h, at + head_dim), simd.load(flat_grad_h, at + head_dim + LANES)
    l_20, l_21 = simd.load(flat_grad_h, at + 2 * head_dim), simd.load(flat_grad_h, at + 2 * head_dim + LANES)
    l_30, l_31 = simd.load(flat_grad_h, at + 3 * head_dim), simd.load(flat_grad_h, at + 3 * head_dim + LANES)
    owed = carry
    for i in range(steps - 1, -1, -1):
        t = t0 + i
        scale = simd.splat(owed)
        here = i * head_dim + c0
        d_0, d_1 = simd.load(drives, here), simd.load(drives, here + LANES)
        row = row0 + i * row_stride + c0
        g_0, g_1 = simd.load(flat_gy, row), simd.load(flat_gy, row + LANES)
        at_B = b * (B.strides[0] // 4) + t * (B.strides[1] // 4) + g * (B.strides[2] // 4) + k0
        at_C = b * (C.strides[0] // 4) + t * (C.strides[1] // 4) + g * (C.strides[2] // 4) + k0
        c_0, c_1 = simd.broadcast(C, at_C), simd.broadcast(C, at_C + 1)
        c_2, c_3 = simd.broadcast(C, at_C + 2), simd.broadcast(C, at_C + 3)
        l_00, l_01 = simd.fma(g_0, c_0, l_00 * scale), simd.fma(g_1, c_0, l_01 * scale)
        l_10, l_11 = simd.fma(g_0, c_1, l_10 * scale), simd.fma(g_1, c_1, l_11 * scale)
        l_20, l_21 = simd.fma(g_0, c_2, l_20 * scale), simd.fma(g_1, c_2, l_21 * scale)
        l_30, l_31 = simd.fma(g_0, c_3, l_30 * scale), simd.fma(g_1, c_3, l_31 * scale)
        b_0, b_1 = simd.broadcast(B, at_B), simd.broadcast(B, at_B + 1)
        b_2, b_3 = simd.broadcast(B, at_B + 2), simd.broadcast(B, at_B + 3)
        sum_0 = simd.fma(b_3, l_30, simd.fma(b_2, l_20, simd.fma(b_1, l_10, b_0 * l_00)))
        sum_1 = simd.fma(b_3, l_31, simd.fma(b_2, l_21, simd.fma(b_1, l_11, b_0 * l_01)))
        simd.store(grad_drives, here, simd.load(grad_drives, here) + sum_0)
        simd.store(grad_drives, here + LANES, simd.load(grad_drives, here + LANES) + sum_1)
        at_sums = (i * d_state + k0) * LANES
        _add_one(sums_B, at_sums, first, simd.fma(d_1, l_01, d_0 * l_00))
        _add_one(sums_B, at_sums + LANES, first, simd.fma(d_1, l_11, d_0 * l_10))
        _add_one(sums_B, at_sums + 2 * LANES, first, simd.fma(d_1, l_21, d_0 * l_20))
        _add_one(sums_B, at_sums + 3 * LANES, first, simd.fma(d_1, l_31, d_0 * l_30))
        owed = decays[i]
    simd.store(flat_grad_h, at, l_00)
    simd.store(flat_grad_h, at + LANES, l_01)
    simd.store(flat_grad_h, at + head_dim, l_10)
    simd.store(flat_grad_h, at + head_dim + LANES, l_11)
    simd.store(flat_grad_h, at + 2 * head_dim, l_20)
    simd.store(flat_grad_h, at + 2 * head_dim + LANES, l_21)
    simd.store(flat_grad_h, at + 3 * head_dim, l_30)
    simd.store(flat_grad_h, at + 3 * head_dim + LANES, l_31)


@njit(inline="always")
def _chunk_finish(
    x, dt, B, C, x_strides, state_strides, D_h, A_h, flat_gy, b, g, head, t0, steps, outside,
    grad_drives, sums_B, sums_C, flat_gB, flat_gC, flat_gx, grad_dt, head_dim, d_state,
):  # fmt: skip
    """Per token of the chunk, last first: fold the partial sums into dL/dB_t and dL/dC_t, then dL/dx,
    dL/ddt and the chunk's shares of dL/dA and dL/dD. The decay's gradient needs no stored states:
    with Q_t = <dL/dh_t, h_t>, h_t = decay_t h_{t-1} + B_t (dt x)_t^T and
    dL/dh_{t-1} = decay_t dL/dh_t + C_{t-1} dL/dy_{t-1}^T,

        dL/d(dt_t A) = decay_t <dL/dh_t, h_{t-1}> = Q_t - B_t . dL/dB_t
        Q_{t-1} = dL/d(dt_t A) + C_{t-1} . dL/dC_{t-1}

    started at the chunk's last token t1 - 1 from `outside` = <decay_{t1} dL/dh_{t1}, h_{t1-1}>, an exact
    dot product with the next checkpoint, so rounding accumulates over one chunk only (float64 here)."""
    length, heads = dt.shape[1], dt.shape[2]
    q = np.float64(outside)
    grad_A_chunk = np.float64(0.0)
    grad_D_chunk = np.float64(0.0)
    zero = simd.splat(np.float32(0.0))
    for i in range(steps - 1, -1, -1):
        t = t0 + i
        dt_t = dt[b, t, head]
        row = ((b * length + t) * heads + head) * d_state
        state_row = b * state_strides[0] + t * state_strides[1] + g * state_strides[2]
        B_grad_B, C_grad_C = zero, zero
        for k0 in range(0, d_state, LANES):
            grad_B_t = simd.lane_sums(sums_B, (i * d_state + k0) * LANES)
            grad_C_t = simd.lane_sums(sums_C, (i * d_state + k0) * LANES)
            simd.store(flat_gB, row + k0, grad_B_t)
            simd.store(flat_gC, row + k0, grad_C_t)
            B_grad_B = simd.fma(simd.load(B, state_row + k0), grad_B_t, B_grad_B)
            C_grad_C = simd.fma(simd.load(C, state_row + k0), grad_C_t, C_grad_C)
        grad_log_decay = q + np.float64(simd.total(C_grad_C)) - np.float64(simd.total(B_grad_B))  # q + C.dL/dC = Q_t
        q = grad_log_decay
        x_row, out_row = (
            b * x_strides[0] + t * x_strides[1] + head * x_strides[2],
            ((b * length + t) * heads + head) * head_dim,
        )
        grad_dt_t, grad_D_t = zero, zero
        for c0 in range(0, head_dim, LANES):
            grad_drive = simd.load(grad_drives, i * head_dim + c0)
            x_c, g_y = simd.load(x, x_row + c0), simd.load(flat_gy, out_row + c0)
            simd.store(flat_gx, out_row + c0, simd.fma(g_y, simd.splat(D_h), simd.splat(dt_t) * grad_drive))
            grad_dt_t = simd.fma(x_c, grad_drive, grad_dt_t)
            grad_D_t = simd.fma(g_y, x_c, grad_D_t)
        grad_dt[b, t, head] = simd.total(grad_dt_t) + np.float32(grad_log_decay) * A_h
        grad_A_chunk += grad_log_decay * dt_t
        grad_D_chunk += simd.total(grad_D_t)
    return grad_A_chunk, grad_D_chunk


_forward_kernel, _backward_kernel = Kernel(_forward), Kernel(_backward)


def strided_view(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a float32 activation whose last dim is contiguous, without copying (x, B and C
    are column slices of the conv's output, z one of in_proj's); `as_array`'s contiguous copy otherwise.
    Not for parameters: `numpy()` pins a storage's size (see `as_array`)."""
    if t.dtype == torch.float32 and t.stride(-1) == 1:
        return t.detach().numpy()
    return as_array(t)


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


def ssd_backward(x, dt, A, B, C, D, checkpoints, grad_y, grad_final):
    """Gradients of x, dt, A, B, C, D (in their dtypes) and of the initial state (fp32), from the
    forward's checkpoints; grad_y (b, l, h, p), grad_final (b, h, p, n)."""
    batch, length, heads, head_dim = x.shape
    groups, d_state = B.shape[2], B.shape[3]
    wide_n, wide_p = padded_shape(d_state, head_dim)
    grad_x = torch.empty(batch, length, heads, wide_p, dtype=torch.float32)
    grad_dt = torch.empty(batch, length, heads, dtype=torch.float32)
    grad_A, grad_D = (torch.empty(batch, heads, dtype=torch.float64) for _ in range(2))
    grad_B, grad_C = (torch.empty(batch, length, heads, wide_n, dtype=torch.float32) for _ in range(2))
    grad_h0 = torch.empty(batch, heads, wide_n, wide_p, dtype=torch.float32)
    _backward_kernel(
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
        *(t.numpy() for t in (grad_x, grad_dt, grad_A, grad_B, grad_C, grad_D, grad_h0)),
    )

    def per_group(per_head):  # (b, l, h, n') -> (b, l, g, n): a group's heads are adjacent
        return per_head[..., :d_state].unflatten(2, (groups, -1)).sum(3)

    return (
        grad_x[..., :head_dim].to(x.dtype),
        grad_dt.to(dt.dtype),
        grad_A.sum(0).to(A.dtype),
        per_group(grad_B).to(B.dtype),
        per_group(grad_C).to(C.dtype),
        grad_D.sum(0).to(D.dtype),
        grad_h0[:, :, :d_state, :head_dim].transpose(-1, -2),
    )
