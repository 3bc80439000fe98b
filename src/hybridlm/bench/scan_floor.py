"""The Mamba-1 scan forward against its instruction-issue floor on this CPU.

The floor: per (b, l, d, n) element the scan must compute exp(dt A), update the state and add
its share of the output. At 16 lanes (ops/simd.py) that is, per 16 elements, 15 vector
instructions: dt * (A log2 e), simd.exp2's 11 (clamp, two adds and a subtract for the rounding,
5 FMAs, a shift, a multiply), drive * B, the state's FMA and the output's FMA. `_floor_loop` runs
exactly that mix with the states held in registers (8 independent ones, so latency never binds)
and dt, drive, A, B, C read from L1 as in the kernel; its time per element is the floor. The
kernel's extra work over the floor: the state row's load and store, the loop and index
arithmetic, and the per-token loads, skip, gate and store.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit

from ..ops import simd
from ..ops.dispatch import kernels, selective_scan
from .timing import Row, best_time

STATES = 8  # states updated per pass of the floor loop, each its own dependency chain
INSTRUCTIONS = 15  # vector instructions per 16 elements in the floor loop (and the kernel's inner loop)


@njit(inline="always")
def _element(step, a, h, drive, b, c, y):
    """One state's update for 16 channels: the kernel's inner loop body, the state in a register."""
    h = simd.fma(simd.exp2(step * a), h, drive * simd.splat(b))
    return h, simd.fma(simd.splat(c), h, y)


@njit(fastmath=True, error_model="numpy")
def _floor_loop(reps, steps, drives, A, BC, out):
    """reps passes over 8 states x 16 lanes; steps, drives (64 * 16,), A (8 * 16,), BC (64, 16)."""
    h0 = h1 = h2 = h3 = h4 = h5 = h6 = h7 = simd.splat(np.float32(0.0))
    y0 = y1 = h0
    for r in range(reps):
        i = r & 63
        s, d = simd.load(steps, i * 16), simd.load(drives, i * 16)
        h0, y0 = _element(s, simd.load(A, 0), h0, d, BC[i, 0], BC[i, 8], y0)
        h1, y1 = _element(s, simd.load(A, 16), h1, d, BC[i, 1], BC[i, 9], y1)
        h2, y0 = _element(s, simd.load(A, 32), h2, d, BC[i, 2], BC[i, 10], y0)
        h3, y1 = _element(s, simd.load(A, 48), h3, d, BC[i, 3], BC[i, 11], y1)
        h4, y0 = _element(s, simd.load(A, 64), h4, d, BC[i, 4], BC[i, 12], y0)
        h5, y1 = _element(s, simd.load(A, 80), h5, d, BC[i, 5], BC[i, 13], y1)
        h6, y0 = _element(s, simd.load(A, 96), h6, d, BC[i, 6], BC[i, 14], y0)
        h7, y1 = _element(s, simd.load(A, 112), h7, d, BC[i, 7], BC[i, 15], y1)
    simd.store(out, 0, y0 + y1 + h0 + h1 + h2 + h3 + h4 + h5 + h6 + h7)


def _floor_run(reps: int):
    """A closure running the floor loop for reps passes (reps * 8 * 16 elements)."""
    generator = np.random.default_rng(0)
    steps = generator.uniform(0.001, 0.1, 64 * 16).astype(np.float32)
    drives = generator.standard_normal(64 * 16).astype(np.float32)
    A = -generator.uniform(1.0, 16.0, STATES * 16).astype(np.float32)
    BC = generator.standard_normal((64, 16)).astype(np.float32)
    out = np.empty(16, np.float32)
    return lambda: _floor_loop(reps, steps, drives, A, BC, out)


def _forward(*inputs):
    with kernels("cpu"), torch.no_grad():
        selective_scan(*inputs)


def scan_inputs(batch: int, length: int, d_inner: int, d_state: int) -> list:
    """Inputs of the Mamba-1 scan benchmarks: x, dt (softplus(randn - 3), as a trained layer's),
    A = -(1 .. n) per channel, B, C (one group), D = 1, z."""
    x, z = torch.randn(batch, length, d_inner), torch.randn(batch, length, d_inner)
    dt = F.softplus(torch.randn(batch, length, d_inner) - 3)
    A = -torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)
    B, C = torch.randn(batch, length, 1, d_state), torch.randn(batch, length, 1, d_state)
    return [x, dt, A, B, C, torch.ones(d_inner), z]


def floor_rows(lengths, batch: int = 2, d_inner: int = 512, d_state: int = 16, repeats: int = 7) -> list[Row]:
    """The scan forward (with the D skip and SiLU(z) gate, no autograd) against the floor loop run for
    the same number of elements, the two alternated (best of `repeats` each): the machine is shared."""
    rows = []
    for length in lengths:
        forward = functools.partial(_forward, *scan_inputs(batch, length, d_inner, d_state))
        elements = batch * length * d_inner * d_state
        floor_run = _floor_run(elements // (STATES * simd.LANES))
        ours = floor = float("inf")
        for _ in range(repeats):
            ours, floor = min(ours, best_time(forward, 1)), min(floor, best_time(floor_run, 1))
        notes = {"x_floor": ours / floor, "floor_ns_per_element": floor / elements * 1e9}
        name = f"Mamba-1 scan fwd L={length} vs issue floor"
        rows.append(Row("kernels", name, ours, floor, f"{INSTRUCTIONS} ops/16 elements", batch * length, notes))
    return rows
