"""A decoding GEMV split between two cores: the calling thread streams the first half of the weight
rows while a worker thread (ops/decode_worker.py) streams the second.

Glossary: b batch rows, o weight rows (output features), i weight columns (input features).

Decoding at batch 1 streams every weight once per token, and one core reads at most ~29 GB/s here
(docs/benchmarks.md); two cores reading disjoint rows read ~55 GB/s. Every fused decoding step's
GEMV goes through `decode_cpu.gemv_rows`, which hands half of a large enough matrix (SPLIT_MIN
elements) to the worker through one process-wide mailbox, while the worker is serving (and runs
every such GEMV through `gemv_by_address`, with or without it, for the same bits):

    caller                                   worker (spinning in `serve`)
    take the mailbox (OWNER 0 -> 1)
    write the task, STATE = POSTED  ------>  STATE POSTED -> WORKER (compare-exchange)
    rows [0, half)                           rows [half, o)
    STATE POSTED -> MAIN? then rows [half, o) itself, else wait for DONE  <------  STATE = DONE

The caller never waits for a worker that has not taken the task: a worker that is asleep, stopped,
descheduled or busy elsewhere leaves it POSTED, and the caller takes it back. Each row is computed
by the same function whichever thread runs it, so the result is bit for bit the one-thread result. A
caller that waits more than STALL_CYCLES for a task the worker took counts a stall: the worker's
core was not free (ops/decode_worker.py then stops it for a while). Callers that find the mailbox
taken (another thread decoding at the same time) run the whole GEMV themselves.
"""

from __future__ import annotations

import numpy as np
from numba import carray, cfunc, njit, types, uintp

from .atomics import (
    call_by_address,
    compare_exchange,
    cycles,
    float32_pointer,
    int64_pointer,
    load_acquire,
    process_global,
    register_global,
    spin_pause,
    store_release,
    yield_core,
)

SPLIT_MIN = 32768  # weight elements (128 KiB) below which the hand-over costs more than half the reads
STALL_CYCLES = 2_000_000  # ~0.8 ms of the time-stamp counter spent waiting for the worker: a stall
SPIN_CYCLES = 100_000  # ~40 us without a task, after which the worker yields its core while it waits

# Mailbox slots (int64). The slots both threads write sit on their own 64-byte lines.
OWNER, STATE, ACTIVE, STOP, STALLS, SPLITS, GEMV_FUNCTION, TASK = 0, 8, 16, 24, 32, 33, 34, 40
W_PTR, ROWS, WIDTH, X_PTR, X_STRIDE, X0, BATCH, OUT_PTR, OUT_STRIDE, COLUMN, BIAS_PTR, BIAS_SIZE, R0 = range(
    TASK, TASK + 13
)
SLOTS = 64
IDLE, POSTED, WORKER, MAIN, DONE = range(5)

_BACKING = np.zeros(SLOTS + 8, np.int64)  # lives as long as the process: kernels hold its address
_OFFSET = (-_BACKING.ctypes.data % 64) // 8
MAILBOX = _BACKING[_OFFSET : _OFFSET + SLOTS]  # aligned to a cache line
_SYMBOL = "hybridlm_gemv_mailbox"
register_global(_SYMBOL, MAILBOX)
_mailbox_address = process_global(_SYMBOL)


@njit(inline="always")
def mailbox():
    """The process's mailbox (int64, SLOTS) as an array inside a kernel."""
    return carray(int64_pointer(_mailbox_address()), (SLOTS,))


@njit(inline="always")
def worker_serving() -> bool:
    return load_acquire(mailbox(), ACTIVE) != 0


@njit(inline="always", fastmath=True, error_model="numpy")
def gemv_range(weight, bias, x, x0, out, column, first, last):
    """out[:, column + r] = x[:, x0 : x0 + i] @ weight[r] (+ bias[r]) for rows r in [first, last);
    weight (o, i) row-major, an empty bias for none.

    One weight row at a time, in stored order, each read once for all b rows: the weights stream as
    one sequential read. Four rows at a time (four dot products per pass over x) read four streams
    1.5-6 KiB apart, which an AMD Zen 4's prefetchers followed at 11 GB/s against 25 GB/s for one
    stream (an Intel Xeon measured the opposite, 20.7 against 17.8 GB/s; docs/benchmarks.md, "One
    weight row at a time"). x's index is unsigned: a signed x0 + i compiles to gathers (numba wraps
    negative indices), a slice of x per row to 2.5x the code."""
    width = weight.shape[1]
    start = uintp(x0)
    for o in range(first, last):
        for row in range(x.shape[0]):
            acc = np.float32(0.0)
            for i in range(width):
                acc += weight[o, i] * x[row, start + uintp(i)]
            out[row, column + o] = acc
    if bias.size:
        for row in range(x.shape[0]):
            for o in range(first, last):
                out[row, column + o] += bias[o]


def _gemv_by_address(
    weight, rows, width, bias, bias_size, x, batch, x_stride, x0, out, out_stride, column, first, last
):  # noqa: E501
    w, b = carray(float32_pointer(weight), (rows, width)), carray(float32_pointer(bias), (bias_size,))
    x_view, out_view = carray(float32_pointer(x), (batch, x_stride)), carray(float32_pointer(out), (batch, out_stride))
    gemv_range(w, b, x_view, x0, out_view, column, first, last)


_GEMV = cfunc(types.void(*[types.int64] * 14), fastmath=True, error_model="numpy", cache=True)(_gemv_by_address)
MAILBOX[GEMV_FUNCTION] = _GEMV.address


@njit(inline="always")
def gemv_by_address(task, first, last):
    """`gemv_range` over rows [first, last) of the GEMV `task`: (weight, rows, width, bias, bias size,
    x, batch, x row stride, x0, out, out row stride, column), addresses and sizes (int64) of
    C-contiguous views. It runs one compiled C function called through its address (the mailbox's
    GEMV_FUNCTION). Every large GEMV runs it, on either thread and with or without the worker: each
    row is summed by the very same machine code, so the logits do not depend on who computed which
    rows (a copy compiled into each kernel would be vectorised, and so summed, as that kernel's
    optimiser chose)."""
    call_by_address(mailbox()[GEMV_FUNCTION], task + (first, last))


@njit(fastmath=True, error_model="numpy")
def gemv_large(weight, bias, x, x0, out, column) -> bool:
    """`gemv_range` over every row by `gemv_by_address`, the second half by the worker when it serves
    and takes it; False (nothing written) where an array is not row-major with unit column stride."""
    rows, width = weight.shape
    item = weight.itemsize
    if weight.strides[1] != item or weight.strides[0] != width * item or x.strides[1] != item:
        return False
    if out.strides[1] != item or (bias.size and bias.strides[0] != item):
        return False
    w, b, x_at, out_at = weight.ctypes.data, bias.ctypes.data, x.ctypes.data, out.ctypes.data
    batch, x_stride, out_stride = x.shape[0], x.strides[0] // item, out.strides[0] // item
    task = (w, rows, width, b, bias.size, x_at, batch, x_stride, x0, out_at, out_stride, column)
    box = mailbox()
    if not (worker_serving() and compare_exchange(box, OWNER, 0, 1)):  # alone (or another thread splits)
        gemv_by_address(task, 0, rows)
        return True
    half = rows // 2 - rows // 2 % 4
    box[W_PTR], box[ROWS], box[WIDTH], box[BIAS_PTR], box[BIAS_SIZE] = w, rows, width, b, bias.size
    box[X_PTR], box[BATCH], box[X_STRIDE], box[X0] = x_at, batch, x_stride, x0
    box[OUT_PTR], box[OUT_STRIDE], box[COLUMN], box[R0] = out_at, out_stride, column, half
    store_release(box, STATE, POSTED)
    gemv_by_address(task, 0, half)
    if compare_exchange(box, STATE, POSTED, MAIN):
        gemv_by_address(task, half, rows)
    else:
        start = cycles()
        while load_acquire(box, STATE) != DONE:
            spin_pause()
        if cycles() - start > STALL_CYCLES:
            box[STALLS] += 1
    store_release(box, STATE, IDLE)
    store_release(box, OWNER, 0)
    return True


@njit(fastmath=True, error_model="numpy")
def _run_task(box):
    """The posted task's rows [R0, ROWS), from the addresses and strides the caller wrote."""
    task = (
        box[W_PTR], box[ROWS], box[WIDTH], box[BIAS_PTR], box[BIAS_SIZE], box[X_PTR], box[BATCH], box[X_STRIDE],
        box[X0], box[OUT_PTR], box[OUT_STRIDE], box[COLUMN],
    )  # fmt: skip
    gemv_by_address(task, box[R0], box[ROWS])


@njit(nogil=True, fastmath=True, error_model="numpy", cache=True)
def serve(idle_cycles: int) -> None:
    """The worker's loop: take and run posted tasks until STOP is set or none came for `idle_cycles`
    of the time-stamp counter. ACTIVE tells callers to post while it runs. After SPIN_CYCLES without a
    task it waits with sched_yield, so that another thread wanting its core (torch's, between two
    decoded tokens) runs at once."""
    box = mailbox()
    store_release(box, ACTIVE, 1)
    last = cycles()
    while load_acquire(box, STOP) == 0:
        if load_acquire(box, STATE) == POSTED and compare_exchange(box, STATE, POSTED, WORKER):
            _run_task(box)
            box[SPLITS] += 1
            store_release(box, STATE, DONE)
            last = cycles()
            continue
        idle = cycles() - last
        if idle > idle_cycles:
            break
        if idle > SPIN_CYCLES:
            yield_core()
        else:
            spin_pause()
    store_release(box, ACTIVE, 0)
