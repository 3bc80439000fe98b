"""Mamba-1 selective scan as a fused CPU kernel (numba), forward and backward.

Glossary (as in selective_scan.py): b batch, l tokens, d channels (d_inner), n state size,
g groups sharing B and C, q checkpoint chunk.

Computes, with the skip D and the gate z folded in (Gu & Dao 2023, eq. 2 and Figure 3):

    h_t   = exp(dt_t A) * h_{t-1} + dt_t B_t x_t        (b, d, n), fp32
    y_t   = C_t . h_t + D x_t                          (b, d)
    out_t = y_t * SiLU(z_t)                            (when z is given)

The CPU analogue of mamba_ssm's CUDA kernel: one pass over time per block of 16 channels, on
explicit 16-lane vectors (ops/simd.py: one zmm register on AVX-512, two ymm on AVX2), the state
block (n, 16) in L1, and (b, l, d, n) never stored. exp(dt A) is 2^(dt A log2 e) by simd.exp2
(11 instructions, 1.6e-7 relative). Rows of x, dt, z are 16 floats d apart per token, a stride the
hardware prefetchers do not follow: the kernels prefetch PREFETCH tokens ahead. The forward runs
a time block (256 tokens) of every channel block before the next time block, so the B and C rows
it shares between blocks stay in cache (at l = 4096 the whole B, C is 1 MiB). The forward keeps
only the state entering every chunk of q steps (l/q of the full states); the backward walks the
chunks in reverse, recomputes the chunk's states and decays into (q + 1, n, 16) buffers and runs
the reverse recurrence dL/dh_{t-1} = exp(dt_t A) * dL/dh_t. Blocks run in parallel. Per-step
gradients of B and C are summed over the block's channels here and over blocks in torch. The
forward handles a partial block (group width not a multiple of 16) through a staging vector; the
backward's wrapper pads each group with zero channels instead.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange

from . import simd
from .numba_support import Kernel, as_array
from .simd import LANES

PREFETCH = 16  # tokens ahead that the kernels ask for their strided rows
TIME_BLOCK_CHUNKS = 4  # chunks of q tokens the forward runs per block before the next: B, C stay in cache
CHUNK = 64  # checkpoint interval q: the backward's buffers, 2 (q + 1) n 16 floats (130 KiB at n = 16), stay in L2


@njit(inline="never", fastmath=True, error_model="numpy", cache=True)
def _block_steps(dt, x, z, has_z, out, row, stride, tail, steps, B, C, bc, bc_stride, states, a, base, skip, d_state):
    """`steps` tokens of one block of 16 full lanes: rows of dt, x, z, out from flat offset `row`, `stride`
    apart; B, C rows from `bc`, `bc_stride` apart; the state and A log2(e) rows k at base + 16 k.

    Per (t, k): 15 vector instructions (u = dt A log2(e), 11 for 2^u, the state's multiply and FMA,
    the output's FMA), the state row read and written in L1. Rows PREFETCH tokens ahead are
    prefetched; for the last PREFETCH tokens, the rows at row + `tail` (the next block's first)."""
    for s in range(steps):
        ahead = row + (PREFETCH * stride if s + PREFETCH < steps else tail)
        simd.prefetch(dt, ahead)
        simd.prefetch(x, ahead)
        simd.prefetch(z, ahead)
        simd.prefetch(out, ahead)
        step, x_t = simd.load(dt, row), simd.load(x, row)
        drive = step * x_t
        y = skip * x_t
        for k in range(d_state):
            here = base + k * LANES
            decay = simd.exp2(step * simd.load(a, here))
            state = simd.fma(decay, simd.load(states, here), drive * simd.broadcast(B, bc + k))
            simd.store(states, here, state)
            y = simd.fma(simd.broadcast(C, bc + k), state, y)
        if has_z:
            y = y * simd.silu(simd.load(z, row))
        simd.store(out, row, y)
        row += stride
        bc += bc_stride


def _forward(x, dt, A_log2e, B, C, D, z, has_z, h0, chunk, splits, out, final_state, checkpoints, keep_checkpoints):
    """One job per (batch, group, 1/splits of the group's blocks of 16 channels); B, C flattened, the rest as named.

    Time-blocked: a job runs TIME_BLOCK_CHUNKS chunks of tokens for each of its blocks in turn, each
    block's state carried in `states`, so those tokens' rows of B and C (n floats each) are read from
    cache by every block instead of the whole sequence's B, C (1 MiB at l = 4096, n = 16) streaming
    from memory once per block. A partial block (a group width not a multiple of 16) runs on copies
    of its rows in `staged`, zero past its lanes."""
    batch, length, channels = dt.shape
    d_state, groups = A_log2e.shape[0], B.shape[2]
    per_group = channels // groups
    blocks = -(-per_group // LANES)
    span = -(-blocks // splits)  # blocks per job
    time_block = TIME_BLOCK_CHUNKS * chunk
    flat_x, flat_dt, flat_z, flat_out = x.ravel(), dt.ravel(), z.ravel(), out.ravel()
    flat_B, flat_C = B.ravel(), C.ravel()
    for job in prange(batch * groups * splits):
        b, g, first = job // (groups * splits), job // splits % groups, job % splits * span
        count = max(0, min(blocks, first + span) - first)
        states = np.zeros(count * d_state * LANES, np.float32)  # block i's row k at (i n + k) 16; zero past its lanes
        a = np.zeros(count * d_state * LANES, np.float32)  # A log2(e), laid out as the states
        skips = np.zeros(count * LANES, np.float32)
        staged = np.zeros((4, chunk * LANES), np.float32)  # dt, x, z, out rows of a partial block
        for i in range(count):
            c0 = g * per_group + (first + i) * LANES
            for c in range(min(LANES, (g + 1) * per_group - c0)):
                skips[i * LANES + c] = D[c0 + c]
                for k in range(d_state):
                    states[(i * d_state + k) * LANES + c] = h0[b, k, c0 + c]
                    a[(i * d_state + k) * LANES + c] = A_log2e[k, c0 + c]
        for t0 in range(0, length, time_block):
            t1 = min(length, t0 + time_block)
            for i in range(count):
                c0 = g * per_group + (first + i) * LANES
                lanes, base, skip = (
                    min(LANES, (g + 1) * per_group - c0),
                    i * d_state * LANES,
                    simd.load(skips, i * LANES),
                )
                for s0 in range(t0, t1, chunk):
                    s1 = min(t1, s0 + chunk)
                    if keep_checkpoints:
                        for k in range(d_state):
                            for c in range(lanes):
                                checkpoints[b, s0 // chunk, k, c0 + c] = states[base + k * LANES + c]
                    row, bc = (b * length + s0) * channels + c0, ((b * length + s0) * groups + g) * d_state
                    if lanes == LANES:
                        tail = PREFETCH * channels if s1 < t1 else LANES - (t1 - t0 - PREFETCH) * channels
                        _block_steps(
                            flat_dt, flat_x, flat_z, has_z, flat_out, row, channels, tail, s1 - s0,
                            flat_B, flat_C, bc, groups * d_state, states, a, base, skip, d_state,
                        )  # fmt: skip
                        continue
                    for s in range(s1 - s0):
                        for c in range(lanes):
                            staged[0, s * LANES + c] = flat_dt[row + s * channels + c]
                            staged[1, s * LANES + c] = flat_x[row + s * channels + c]
                            if has_z:
                                staged[2, s * LANES + c] = flat_z[row + s * channels + c]
                    _block_steps(
                        staged[0], staged[1], staged[2], has_z, staged[3], 0, LANES, PREFETCH * LANES, s1 - s0,
                        flat_B, flat_C, bc, groups * d_state, states, a, base, skip, d_state,
                    )  # fmt: skip
                    for s in range(s1 - s0):
                        for c in range(lanes):
                            flat_out[row + s * channels + c] = staged[3, s * LANES + c]
        for i in range(count):
            c0 = g * per_group + (first + i) * LANES
            for c in range(min(LANES, (g + 1) * per_group - c0)):
                for k in range(d_state):
                    final_state[b, k, c0 + c] = states[(i * d_state + k) * LANES + c]


def _backward(
    x, dt, A_log2e, A_t, B, C, D, z, has_z, checkpoints, grad_out, grad_final, chunk,
    grad_x, grad_dt, grad_z, grad_A, grad_B, grad_C, grad_D, grad_h0,
):  # fmt: skip
    """Jobs as in `_forward`, every block full (the wrapper pads each group to a multiple of 16).
    Per chunk: recompute its states and decays from the checkpoint, then walk it backwards:
    g_h = dL/dh_t = grad_h + g_y C_t, dL/d(dt A) = g_h h_{t-1} decay, dL/dh_{t-1} = g_h decay.
    dL/dx and dL/d(dt) share sum_k g_h B_k (times dt, times x); dL/dB_k, dL/dC_k are lane sums
    (simd.lane_sums, 16 states at once)."""
    batch, length, channels = dt.shape
    d_state, groups = A_t.shape[0], B.shape[2]
    per_group = channels // groups
    blocks = -(-per_group // LANES)
    n_chunks = checkpoints.shape[1]
    flat = (x.ravel(), dt.ravel(), z.ravel(), grad_out.ravel(), grad_x.ravel(), grad_dt.ravel(), grad_z.ravel())
    flat_x, flat_dt, flat_z, flat_grad_out, flat_grad_x, flat_grad_dt, flat_grad_z = flat
    flat_B, flat_C, flat_grad_B, flat_grad_C = B.ravel(), C.ravel(), grad_B.ravel(), grad_C.ravel()
    padded_state = grad_B.shape[3]  # n rounded up to whole vectors
    for job in prange(batch * groups * blocks):
        b, g, j = job // (groups * blocks), job // blocks % groups, job % blocks
        c0 = g * per_group + j * LANES
        products_B = np.zeros(padded_state * LANES, np.float32)  # per state: the lanes of dL/dB_k, dL/dC_k
        products_C = np.zeros(padded_state * LANES, np.float32)
        a = np.zeros(d_state * LANES, np.float32)
        A_k = np.zeros(d_state * LANES, np.float32)
        grad_h = np.zeros(d_state * LANES, np.float32)  # dL/dh_t, carried backwards in time
        grad_A_chunk = np.empty(d_state * LANES, np.float32)
        states = np.zeros((chunk + 1) * d_state * LANES, np.float32)  # h_{t0-1} .. h_{t1-1} of one chunk
        decays = np.zeros(chunk * d_state * LANES, np.float32)
        staging = np.zeros(LANES, np.float32)
        grad_A_total = np.zeros((d_state, LANES), np.float64)
        grad_D_total = np.zeros(LANES, np.float64)
        for k in range(d_state):
            for c in range(LANES):
                a[k * LANES + c] = A_log2e[k, c0 + c]
                A_k[k * LANES + c] = A_t[k, c0 + c]
                grad_h[k * LANES + c] = grad_final[b, k, c0 + c]
        skip = simd.load(D, c0)
        for chunk_index in range(n_chunks - 1, -1, -1):
            t0 = chunk_index * chunk
            t1 = min(length, t0 + chunk)
            for k in range(d_state):
                for c in range(LANES):
                    states[k * LANES + c] = checkpoints[b, chunk_index, k, c0 + c]
            for t in range(t0, t1):
                i, row = t - t0, (b * length + t) * channels + c0
                simd.prefetch(flat_dt, row + PREFETCH * channels)
                simd.prefetch(flat_x, row + PREFETCH * channels)
                step, x_t = simd.load(flat_dt, row), simd.load(flat_x, row)
                drive = step * x_t
                bc = ((b * length + t) * groups + g) * d_state
                for k in range(d_state):
                    here = (i * d_state + k) * LANES
                    decay = simd.exp2(step * simd.load(a, k * LANES))
                    simd.store(decays, here, decay)
                    state = simd.fma(decay, simd.load(states, here), drive * simd.splat(flat_B[bc + k]))
                    simd.store(states, here + d_state * LANES, state)
            grad_A_chunk[:] = 0.0
            grad_D_chunk = simd.splat(np.float32(0.0))
            for t in range(t1 - 1, t0 - 1, -1):
                i, row = t - t0, (b * length + t) * channels + c0
                bc = ((b * length + t) * groups + g) * d_state
                behind = row - PREFETCH * channels  # this walk runs backwards in time
                simd.prefetch(flat_grad_out, behind)
                simd.prefetch(flat_z, behind)
                simd.prefetch(flat_grad_x, behind)
                simd.prefetch(flat_grad_dt, behind)
                simd.prefetch(flat_grad_z, behind)
                step, x_t = simd.load(flat_dt, row), simd.load(flat_x, row)
                drive = step * x_t
                g_y = simd.load(flat_grad_out, row)
                if has_z:  # d out / d z needs y, recomputed from the states
                    y = skip * x_t
                    for k in range(d_state):
                        y = simd.fma(simd.splat(flat_C[bc + k]), simd.load(states, ((i + 1) * d_state + k) * LANES), y)
                    gate = simd.load(flat_z, row)
                    sig = simd.sigmoid(gate)
                    one = simd.splat(np.float32(1.0))
                    grad_gate = g_y * y * sig * simd.fma(gate, one - sig, one)
                    simd.store(flat_grad_z, row, grad_gate)
                    g_y = g_y * gate * sig
                grad_D_chunk = simd.fma(g_y, x_t, grad_D_chunk)
                sum_gB = simd.splat(np.float32(0.0))
                sum_gdA = simd.splat(np.float32(0.0))
                for k in range(d_state):
                    here = (i * d_state + k) * LANES
                    h_prev, h, decay = (
                        simd.load(states, here),
                        simd.load(states, here + d_state * LANES),
                        simd.load(decays, here),
                    )
                    simd.store(products_C, k * LANES, g_y * h)
                    g_h = simd.fma(g_y, simd.splat(flat_C[bc + k]), simd.load(grad_h, k * LANES))
                    g_decay = g_h * h_prev * decay  # dL/d(dt A)
                    sum_gB = simd.fma(g_h, simd.splat(flat_B[bc + k]), sum_gB)
                    sum_gdA = simd.fma(g_decay, simd.load(A_k, k * LANES), sum_gdA)
                    simd.store(products_B, k * LANES, g_h * drive)
                    simd.store(grad_A_chunk, k * LANES, simd.fma(g_decay, step, simd.load(grad_A_chunk, k * LANES)))
                    simd.store(grad_h, k * LANES, g_h * decay)
                sums = ((b * length + t) * groups * blocks + g * blocks + j) * padded_state
                for k in range(0, padded_state, LANES):
                    simd.store(flat_grad_B, sums + k, simd.lane_sums(products_B, k * LANES))
                    simd.store(flat_grad_C, sums + k, simd.lane_sums(products_C, k * LANES))
                simd.store(flat_grad_x, row, simd.fma(step, sum_gB, skip * g_y))
                simd.store(flat_grad_dt, row, simd.fma(x_t, sum_gB, sum_gdA))
            simd.store(staging, 0, grad_D_chunk)
            for c in range(LANES):
                grad_D_total[c] += staging[c]
                for k in range(d_state):
                    grad_A_total[k, c] += grad_A_chunk[k * LANES + c]
        for c in range(LANES):
            grad_D[b, c0 + c] = grad_D_total[c]
            for k in range(d_state):
                grad_h0[b, k, c0 + c] = grad_h[k * LANES + c]
                grad_A[b, k, c0 + c] = grad_A_total[k, c]


_forward_kernel, _backward_kernel = Kernel(_forward), Kernel(_backward)


def _channels_last(t: torch.Tensor) -> np.ndarray:
    """(..., d, n) -> (..., n, d) float32 contiguous: the kernels' layout for A and states."""
    return as_array(t.transpose(-1, -2))


def _log2e_channels_last(A: torch.Tensor) -> np.ndarray:
    """A log2(e) as (n, d) float32, rounded once from float64: exp(dt A) = 2^(dt A log2 e)."""
    return _channels_last(A.detach().double().mul(math.log2(math.e)))


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
    work = x.numel() * d_state
    blocks = -(-channels // B.shape[2] // LANES)
    _forward_kernel(
        work,
        as_array(x),
        as_array(dt),
        _log2e_channels_last(A),
        as_array(B),
        as_array(C),
        as_array(D),
        as_array(z),
        z.numel() > 0,
        _channels_last(initial_state),
        CHUNK,
        min(blocks, Kernel.threads(work)),  # each group's blocks split between the threads
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
        if grad_out is None:
            grad_out = x.new_zeros(x.shape, dtype=torch.float32)
        if grad_final is None:
            grad_final = x.new_zeros(batch, channels, d_state, dtype=torch.float32)
        per_group = channels // groups
        width = -(-per_group // LANES) * LANES  # each group padded with zero channels to whole blocks

        def padded(t, dim):  # channels at `dim`, as (..., g * width, ...) float32 contiguous
            t = t.float()
            if width == per_group or t.numel() == 0:
                return t.contiguous()
            shape = t.shape[:dim] + (groups, per_group) + t.shape[dim + 1 :]
            pad = [0, 0] * (t.dim() - dim - 1) + [0, width - per_group]
            grouped = torch.nn.functional.pad(t.reshape(shape), pad)
            return grouped.reshape(t.shape[:dim] + (groups * width,) + t.shape[dim + 1 :])

        wide = groups * width
        grad_x, grad_dt = (torch.empty(batch, length, wide, dtype=torch.float32) for _ in range(2))
        grad_z = torch.empty(batch, length, wide, dtype=torch.float32) if z.numel() else z.new_empty(0, 0, 0)
        grad_A = torch.empty(batch, d_state, wide, dtype=torch.float64)
        padded_state = -(-d_state // LANES) * LANES
        blocks_shape = (batch, length, wide // LANES, padded_state)
        grad_B, grad_C = (torch.empty(blocks_shape, dtype=torch.float32) for _ in range(2))
        grad_D = torch.empty(batch, wide, dtype=torch.float64)
        grad_h0 = torch.empty(batch, d_state, wide, dtype=torch.float32)
        A_wide = padded(A, 0)  # no detach(): as_array views parameters without pinning their storage
        _backward_kernel(
            x.numel() * d_state,
            as_array(padded(x, 2)),
            as_array(padded(dt, 2)),
            _log2e_channels_last(A_wide),
            _channels_last(A_wide),
            as_array(B),
            as_array(C),
            as_array(padded(D, 0)),
            as_array(padded(z, 2)),
            z.numel() > 0,
            as_array(padded(checkpoints, 3)),
            as_array(padded(grad_out, 2)),
            _channels_last(padded(grad_final, 1)),
            CHUNK,
            *(t.numpy() for t in (grad_x, grad_dt, grad_z, grad_A, grad_B, grad_C, grad_D, grad_h0)),
        )

        def narrow(t, dim):  # drop the padding channels again
            if width == per_group or t.numel() == 0:
                return t
            grouped = t.unflatten(dim, (groups, width)).narrow(dim + 1, 0, per_group)
            return grouped.flatten(dim, dim + 1)

        def per_group_sum(blocks):  # (b, l, g * blocks, n padded) -> (b, l, g, n): a group's blocks are adjacent
            return blocks[..., :d_state].unflatten(2, (groups, -1)).sum(3)

        return (
            narrow(grad_x, 2).to(x.dtype),
            narrow(grad_dt, 2).to(dt.dtype),
            narrow(grad_A, 2).sum(0).t().to(A.dtype),
            per_group_sum(grad_B).to(B.dtype),
            per_group_sum(grad_C).to(C.dtype),
            narrow(grad_D, 1).sum(0).to(D.dtype),
            narrow(grad_z, 2).to(z.dtype),
            narrow(grad_h0, 2).transpose(1, 2).to(ctx.initial_dtype),
        )
