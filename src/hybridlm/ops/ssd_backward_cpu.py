"""The backward of the Mamba-2 SSD CPU kernel (ops/ssd_cpu.py), in 16-lane register tiles.

Glossary (as in ssd.py): b batch, l tokens, h heads, p head dim, g groups sharing B and C,
n state size, q checkpoint chunk; a tile is 4 state rows k by 64 channels c (four simd vectors)
when p is a multiple of 64, else by 32 (two). The wider tile writes its lane partial sums once per
row instead of adding to them, and adds into dL/d(dt x) half as often: 13.4 -> 9.1 ms for
(b, l, h, p, n) = (2, 1024, 8, 64, 64) on one AVX-512 core (32 vector registers); compiled for
AVX2 (NUMBA_CPU_NAME=haswell, 16 registers) both tiles take 17.3-17.8 ms.

The chunks run in reverse. Per tile, `_chunk_grad_C` recomputes the chunk's states from the
chunk's checkpoint in registers (no stored states) and `_chunk_grad_h` runs the reverse recurrence
(Dao & Gu 2024, eq. 2 differentiated):

    dL/dh_t = exp(dt_{t+1} A) dL/dh_{t+1} + C_t dL/dy_t
    dL/d(dt x)_t[c] = sum_k dL/dh_t[k, c] B_t[k]
    dL/dB_t[k] = sum_c dL/dh_t[k, c] (dt x)_t[c],   dL/dC_t[k] = sum_c dL/dy_t[c] h_t[k, c]

the sums over c kept as 16 lane partial sums per (t, k) and folded by `_chunk_finish`, which also
gets dL/d(dt A) without the states from the recursion in its docstring. Heads run in parallel,
then tokens, adding up each group's heads' dL/dB and dL/dC; per-head sums of the gradients of A
and D are added up in torch.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import simd
from .numba_support import Kernel, copy_into, exp_nonpositive
from .simd import LANES


@njit(inline="always")
def _add_one(sums, at, first, product):
    simd.store(sums, at, product if first else simd.load(sums, at) + product)


def _backward(
    x, dt, A, B, C, D, checkpoints, grad_y, grad_final, chunk,
    grad_x, grad_dt, grad_A, head_grad_B, head_grad_C, grad_D, grad_h0, grad_B, grad_C,
):  # fmt: skip
    batch, length, heads, head_dim = x.shape
    groups, d_state = B.shape[2], B.shape[3]
    per_group = heads // groups
    n_chunks = checkpoints.shape[1] - 1
    flat_gy, flat_gB, flat_gC = grad_y.reshape(-1), head_grad_B.reshape(-1), head_grad_C.reshape(-1)
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
            # <dL/dh_{t1-1}, h_{t1-1}> from outside the chunk, before grad_h moves: see `_chunk_finish`
            outside = carry * _dot(flat_grad_h, checkpoints[b, chunk_index + 1, head].reshape(-1))
            row0, row_stride = ((b * length + t0) * heads + head) * head_dim, heads * head_dim  # grad_y rows
            if head_dim % (4 * LANES) == 0:  # tiles of 4 rows x 64 channels: each row's channels in one pass
                for c0 in range(0, head_dim, 4 * LANES):
                    first = c0 == 0
                    for k0 in range(0, d_state, 4):
                        _chunk_grad_C_wide(B, g, b, t0, steps, k0, c0, first, start, drives, decays, flat_gy,
                                           sums_C, row0, row_stride, head_dim, d_state)  # fmt: skip
                        _chunk_grad_h_wide(B, C, g, b, t0, steps, k0, c0, first, flat_grad_h, carry, drives,
                                           decays, flat_gy, grad_drives, sums_B, row0, row_stride, head_dim,
                                           d_state)  # fmt: skip
            else:  # tiles of 4 rows x 32 channels
                for c0 in range(0, head_dim, 2 * LANES):
                    first = c0 == 0  # the first channel block writes the partial sums, the others add
                    for k0 in range(0, d_state, 4):
                        _chunk_grad_C(B, g, b, t0, steps, k0, c0, first, start, drives, decays, flat_gy, sums_C,
                                      row0, row_stride, head_dim, d_state)  # fmt: skip
                        _chunk_grad_h(B, C, g, b, t0, steps, k0, c0, first, flat_grad_h, carry, drives, decays,
                                      flat_gy, grad_drives, sums_B, row0, row_stride, head_dim, d_state)  # fmt: skip
            carry = decays[0]  # grad_h holds dL/dh_{t0}; dL/dh_{t0-1} = decay_{t0} * that, applied lazily
            grad_A_chunk, grad_D_chunk = _chunk_finish(
                x, dt, B, C, x_strides, state_strides, D_h, A_h, flat_gy, b, g, head, t0, steps, outside,
                grad_drives, sums_B, sums_C, flat_gB, flat_gC, grad_x, grad_dt, head_dim, d_state,
            )  # fmt: skip
            grad_A_total += grad_A_chunk
            grad_D_total += grad_D_chunk
        for i in range(d_state * head_dim):
            flat_grad_h[i] *= carry
        copy_into(grad_h0[b, head], grad_h)
        grad_A[b, head] = grad_A_total
        grad_D[b, head] = grad_D_total
    for token in prange(batch * length):  # after every head is done: sum each group's heads
        _sum_over_heads(flat_gB, grad_B, token, length, heads)
        _sum_over_heads(flat_gC, grad_C, token, length, heads)


@njit(inline="always")
def _sum_over_heads(flat_per_head, out, token, length, heads):
    """out[b, t, g] = sum over the heads of group g of per_head[b, t, head, :n] for token = b l + t,
    from the flat per-head gradients (b, l, h, n'); a group's heads are adjacent. out (b, l, g, n)
    may be a strided view (columns of the conv's gradient)."""
    b, t = token // length, token % length
    groups, d_state = out.shape[2], out.shape[3]
    per_group, wide_n = heads // groups, flat_per_head.size // (out.shape[0] * length * heads)
    whole = d_state - d_state % LANES
    for g in range(groups):
        first = (token * heads + g * per_group) * wide_n
        at_out = b * (out.strides[0] // 4) + t * (out.strides[1] // 4) + g * (out.strides[2] // 4)
        for k0 in range(0, whole, LANES):
            total = simd.load(flat_per_head, first + k0)
            for j in range(1, per_group):
                total = total + simd.load(flat_per_head, first + j * wide_n + k0)
            simd.store(out, at_out + k0, total)
        for k in range(whole, d_state):
            value = flat_per_head[first + k]
            for j in range(1, per_group):
                value += flat_per_head[first + j * wide_n + k]
            out[b, t, g, k] = value


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
def _row_load(array, at):
    return (
        simd.load(array, at), simd.load(array, at + LANES), simd.load(array, at + 2 * LANES),
        simd.load(array, at + 3 * LANES),
    )  # fmt: skip


@njit(inline="always")
def _row_step(row, d, b_k, decay):
    """One state row of 64 channels a token on: h[k] = decay h[k] + B_t[k] (dt x)_t."""
    return (
        simd.fma(d[0], b_k, row[0] * decay), simd.fma(d[1], b_k, row[1] * decay),
        simd.fma(d[2], b_k, row[2] * decay), simd.fma(d[3], b_k, row[3] * decay),
    )  # fmt: skip


@njit(inline="always")
def _row_dot(g, row):
    return simd.fma(g[3], row[3], simd.fma(g[2], row[2], simd.fma(g[1], row[1], g[0] * row[0])))


@njit(inline="always")
def _chunk_grad_C_wide(
    B, g, b, t0, steps, k0, c0, first, start, drives, decays, flat_gy, sums_C, row0, row_stride, head_dim, d_state
):
    """`_chunk_grad_C` for a tile of 4 rows x 64 channels (four vectors a row): when p is a multiple
    of 64 one pass covers a row's channels, so the partial sums are written once, not added to."""
    at = k0 * head_dim + c0
    h_0, h_1 = _row_load(start, at), _row_load(start, at + head_dim)
    h_2, h_3 = _row_load(start, at + 2 * head_dim), _row_load(start, at + 3 * head_dim)
    for i in range(steps):
        t = t0 + i
        decay = simd.splat(decays[i])
        d, grad_y = _row_load(drives, i * head_dim + c0), _row_load(flat_gy, row0 + i * row_stride + c0)
        at_B = b * (B.strides[0] // 4) + t * (B.strides[1] // 4) + g * (B.strides[2] // 4) + k0
        h_0 = _row_step(h_0, d, simd.broadcast(B, at_B), decay)
        h_1 = _row_step(h_1, d, simd.broadcast(B, at_B + 1), decay)
        h_2 = _row_step(h_2, d, simd.broadcast(B, at_B + 2), decay)
        h_3 = _row_step(h_3, d, simd.broadcast(B, at_B + 3), decay)
        at_sums = (i * d_state + k0) * LANES
        _add_one(sums_C, at_sums, first, _row_dot(grad_y, h_0))
        _add_one(sums_C, at_sums + LANES, first, _row_dot(grad_y, h_1))
        _add_one(sums_C, at_sums + 2 * LANES, first, _row_dot(grad_y, h_2))
        _add_one(sums_C, at_sums + 3 * LANES, first, _row_dot(grad_y, h_3))


@njit(inline="always")
def _row_store(array, at, row):
    simd.store(array, at, row[0])
    simd.store(array, at + LANES, row[1])
    simd.store(array, at + 2 * LANES, row[2])
    simd.store(array, at + 3 * LANES, row[3])


@njit(inline="always")
def _add_column(array, at, b_0, b_1, b_2, b_3, v_0, v_1, v_2, v_3):
    """array[at : at + 16] += sum_r b_r v_r over a tile's four rows."""
    simd.store(array, at, simd.load(array, at) + simd.fma(b_3, v_3, simd.fma(b_2, v_2, simd.fma(b_1, v_1, b_0 * v_0))))


@njit(inline="always")
def _chunk_grad_h_wide(
    B, C, g, b, t0, steps, k0, c0, first, flat_grad_h, carry, drives, decays, flat_gy, grad_drives, sums_B,
    row0, row_stride, head_dim, d_state,
):  # fmt: skip
    """`_chunk_grad_h` for a tile of 4 rows x 64 channels, as `_chunk_grad_C_wide`."""
    at = k0 * head_dim + c0
    l_0, l_1 = _row_load(flat_grad_h, at), _row_load(flat_grad_h, at + head_dim)
    l_2, l_3 = _row_load(flat_grad_h, at + 2 * head_dim), _row_load(flat_grad_h, at + 3 * head_dim)
    owed = carry
    for i in range(steps - 1, -1, -1):
        t = t0 + i
        scale = simd.splat(owed)
        here = i * head_dim + c0
        d, grad_y = _row_load(drives, here), _row_load(flat_gy, row0 + i * row_stride + c0)
        at_B = b * (B.strides[0] // 4) + t * (B.strides[1] // 4) + g * (B.strides[2] // 4) + k0
        at_C = b * (C.strides[0] // 4) + t * (C.strides[1] // 4) + g * (C.strides[2] // 4) + k0
        l_0 = _row_step(l_0, grad_y, simd.broadcast(C, at_C), scale)
        l_1 = _row_step(l_1, grad_y, simd.broadcast(C, at_C + 1), scale)
        l_2 = _row_step(l_2, grad_y, simd.broadcast(C, at_C + 2), scale)
        l_3 = _row_step(l_3, grad_y, simd.broadcast(C, at_C + 3), scale)
        b_0, b_1 = simd.broadcast(B, at_B), simd.broadcast(B, at_B + 1)
        b_2, b_3 = simd.broadcast(B, at_B + 2), simd.broadcast(B, at_B + 3)
        _add_column(grad_drives, here, b_0, b_1, b_2, b_3, l_0[0], l_1[0], l_2[0], l_3[0])
        _add_column(grad_drives, here + LANES, b_0, b_1, b_2, b_3, l_0[1], l_1[1], l_2[1], l_3[1])
        _add_column(grad_drives, here + 2 * LANES, b_0, b_1, b_2, b_3, l_0[2], l_1[2], l_2[2], l_3[2])
        _add_column(grad_drives, here + 3 * LANES, b_0, b_1, b_2, b_3, l_0[3], l_1[3], l_2[3], l_3[3])
        at_sums = (i * d_state + k0) * LANES
        _add_one(sums_B, at_sums, first, _row_dot(d, l_0))
        _add_one(sums_B, at_sums + LANES, first, _row_dot(d, l_1))
        _add_one(sums_B, at_sums + 2 * LANES, first, _row_dot(d, l_2))
        _add_one(sums_B, at_sums + 3 * LANES, first, _row_dot(d, l_3))
        owed = decays[i]
    _row_store(flat_grad_h, at, l_0)
    _row_store(flat_grad_h, at + head_dim, l_1)
    _row_store(flat_grad_h, at + 2 * head_dim, l_2)
    _row_store(flat_grad_h, at + 3 * head_dim, l_3)


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
    grad_drives, sums_B, sums_C, flat_gB, flat_gC, grad_x, grad_dt, head_dim, d_state,
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
        gx_row = b * (grad_x.strides[0] // 4) + t * (grad_x.strides[1] // 4) + head * (grad_x.strides[2] // 4)
        grad_dt_t, grad_D_t = zero, zero
        for c0 in range(0, head_dim, LANES):
            grad_drive = simd.load(grad_drives, i * head_dim + c0)
            x_c, g_y = simd.load(x, x_row + c0), simd.load(flat_gy, out_row + c0)
            simd.store(grad_x, gx_row + c0, simd.fma(g_y, simd.splat(D_h), simd.splat(dt_t) * grad_drive))
            grad_dt_t = simd.fma(x_c, grad_drive, grad_dt_t)
            grad_D_t = simd.fma(g_y, x_c, grad_D_t)
        grad_dt[b, t, head] = simd.total(grad_dt_t) + np.float32(grad_log_decay) * A_h
        grad_A_chunk += grad_log_decay * dt_t
        grad_D_chunk += simd.total(grad_D_t)
    return grad_A_chunk, grad_D_chunk


backward_kernel = Kernel(_backward)
