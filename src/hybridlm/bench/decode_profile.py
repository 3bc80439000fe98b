"""Where a decoded token's time goes, and how far it is from the weight-streaming floor.

Per token at batch 1, for the fused decoding steps (the default kernels) and the eager reference:
the wall time; the time inside top-level aten ops and how many there are (torch profiler);
everything else (Python, module calls, numba kernels, which are not aten ops); and the floor.

Decoding one token reads every weight it uses once (an MoE layer only its router and top-k experts;
the embedding one row unless it is tied to the LM head, which reads it all), so the step cannot
beat   floor = weight bytes read per token / single-core read bandwidth,
the bandwidth measured in the same run as the best of a few reads of a buffer as large as those
weights (so it sits in the same level of the memory hierarchy as the model), alternated with the
decoding runs. `floor_ratio` = wall / floor; 1.0 would be pure weight streaming. The probe re-reads
its buffer back to back; on this shared VM a buffer touched again only after a few ms of other
work streams slower (27.9 / 26.1 / 20.1 / 12.1 GB/s with 0 / 1.6 / 4.8 / 15 ms between reads), so a
step that also computes cannot quite reach it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time

import numpy as np
import torch

from ..analysis.params import active_parameters
from ..model import HybridLM
from ..ops import decode_worker
from ..ops.dispatch import kernel_choice, kernels
from ..presets import preset_config
from .timing import Row

FP32_BYTES = 4


def decode_weight_bytes(model: HybridLM) -> int:
    """Bytes of parameters one decoded token reads: active parameters (analysis.params: MoE counts its
    router and top-k experts), the embedding as one row when the LM head does not read it."""
    embedding = model.embed_tokens.weight
    elements = active_parameters(model)
    if model.lm_head.weight is not embedding:
        elements -= embedding.numel() - embedding.shape[1]
    return elements * embedding.element_size()


def read_bandwidth(nbytes: int, repeats: int = 5) -> float:
    """Bytes/s of reading an fp32 buffer of `nbytes` once, best of `repeats` and of two readers:
    torch's `sum` and, with numba, a plain vectorised sum (torch's cascade summation runs at about
    half the memory's pace here: 12-21 GB/s where a plain read streams 24-29 GB/s)."""
    buffer = torch.ones(max(nbytes // FP32_BYTES, 1 << 16))
    readers = [buffer.sum]
    if kernel_choice().cpu == "numba":
        array, plain_sum = buffer.numpy(), _plain_sum()
        readers.append(lambda: plain_sum(array))
    best = float("inf")
    for reader in readers:
        reader()
        for _ in range(repeats):
            start = time.perf_counter()
            reader()
            best = min(best, time.perf_counter() - start)
    return buffer.numel() * FP32_BYTES / best


@functools.cache
def _plain_sum():
    """A numba sum of a 1-D float32 array that vectorises (fastmath lets it reassociate): one read per element."""
    from numba import njit

    @njit(fastmath=True)
    def plain_sum(values):
        total = np.float32(0.0)
        for i in range(values.shape[0]):
            total += values[i]
        return total

    return plain_sum


def gemv_stream_row(preset: str = "transformer", size: str = "small", rounds: int = 8) -> Row:
    """The decoding GEMV's pace against a plain read of as many bytes: every 2-D parameter of the
    preset's model times a vector by `decode_cpu.gemv_rows`, one matrix after another as a decoded
    token streams them, alternated with the plain read (`read_bandwidth`'s numba sum over one buffer),
    best of `rounds`. ratio = read time / GEMV time: 1.0 is a GEMV streaming at the host's read pace
    (on the 12-02 AMD host, four interleaved weight rows a pass gave 0.27-0.49, one row 0.64-0.99)."""
    from numba import typed

    from ..ops.decode_cpu import weight_view

    torch.manual_seed(0)
    model = HybridLM(preset_config(preset, size))
    matrices = typed.List([weight_view(p) for p in model.parameters() if p.dim() == 2])
    nbytes = sum(m.nbytes for m in matrices)
    x = np.ones((1, max(m.shape[1] for m in matrices)), np.float32)
    out = np.empty((1, max(m.shape[0] for m in matrices)), np.float32)
    buffer = torch.ones(nbytes // FP32_BYTES).numpy()  # torch's memory, as the weights' (numpy's asks for huge pages)
    plain_sum, gemvs = _plain_sum(), _gemv_each()
    gemv_s = read_s = float("inf")
    for _ in range(rounds + 1):  # the first round compiles and warms up
        start = time.perf_counter()
        gemvs(matrices, x, out)
        middle = time.perf_counter()
        plain_sum(buffer)
        gemv_s, read_s = min(gemv_s, middle - start), min(read_s, time.perf_counter() - middle)
    notes = {"MB": nbytes / 1e6, "gemv_GB_per_s": nbytes / gemv_s / 1e9, "read_GB_per_s": nbytes / read_s / 1e9}
    return Row("decode-profile", f"GEMV over {preset} {size}'s matrices", gemv_s, read_s, "plain read", 0, notes)


@functools.cache
def _gemv_each():
    """A numba loop: out[:, :o] = x[:, :i] @ m.T for each matrix m (o, i) of a typed list, by the
    decoding GEMV (`decode_cpu.gemv_rows`, the second core's worker included while it serves)."""
    from numba import njit

    from ..ops.decode_cpu import gemv_rows

    @njit(fastmath=True)
    def gemv_each(matrices, x, out):
        no_bias = np.empty(0, np.float32)
        for matrix in matrices:
            gemv_rows(matrix, no_bias, x, 0, out, 0)

    return gemv_each


def _decode(model: HybridLM, cache, steps: int) -> float:
    token = torch.zeros(1, 1, dtype=torch.long)
    start = time.perf_counter()
    for _ in range(steps):
        model(token, cache=cache)
    return (time.perf_counter() - start) / steps


def decode_profile_rows(
    presets=("mamba", "jamba", "transformer"), size: str = "small", steps: int = 32, prompt: int = 16, rounds: int = 12
):
    """One row per preset and path: the best of `rounds` short runs (8 tokens, about as long as the
    bandwidth probe, so that both have the same chance of a quiet moment on a shared machine) of
    wall time per token, alternating the paths and the probe in one process; then one profiled run
    of `steps` tokens per path for the op counts. Each run follows two untimed tokens: the probe
    streams other memory, and the first token after it finds the weights out of cache.

    Paths: the fused kernels at the process's thread count, the eager reference, and, where two CPUs
    may be used, the fused kernels with the second core's GEMV worker (ops/decode_worker.py; two
    threads for that path only). The floor stays the one-core floor."""
    paths = [("fused kernels", _kernels("")), ("reference", _kernels("reference"))]
    if decode_worker.WORKER.permitted():
        paths.append(("fused kernels, second core", _second_core))
    rows = []
    for preset in presets:
        torch.manual_seed(0)
        model = HybridLM(preset_config(preset, size)).eval()
        weight_bytes = decode_weight_bytes(model)
        caches, walls, bandwidth = {}, {label: float("inf") for label, _ in paths}, 0.0
        with torch.inference_mode():
            for label, path in paths:
                with path():
                    caches[label] = model.allocate_cache(1, max_len=prompt + 10 * rounds + steps + 8)
                    model(torch.zeros(1, prompt, dtype=torch.long), cache=caches[label])
                    _decode(model, caches[label], 2)  # warm-up (and numba's compilation)
            for _ in range(rounds):
                bandwidth = max(bandwidth, read_bandwidth(weight_bytes, repeats=2))
                for label, path in paths:
                    with path():
                        _decode(model, caches[label], 2)  # back to decoding's steady state
                        walls[label] = min(walls[label], _decode(model, caches[label], 8))
            floor = weight_bytes / bandwidth
            for label, path in paths:
                with path(), _quiet_profiler() as p:
                    _decode(model, caches[label], steps)
                top_level = [e for e in p.events() if e.cpu_parent is None and e.name.startswith("aten::")]
                in_ops = sum(e.cpu_time_total for e in top_level) / 1e6 / steps
                wall = walls[label]
                notes = {
                    "aten_ops_per_token": len(top_level) / steps,
                    "in_aten_ops_us": in_ops * 1e6,
                    "outside_aten_ops_us": max(wall - in_ops, 0.0) * 1e6,  # of the unprofiled wall
                    "weight_MB_per_token": weight_bytes / 1e6,
                    "read_GB_per_s": bandwidth / 1e9,
                    "floor_us": floor * 1e6,
                    "floor_ratio": wall / floor,
                }
                if path is _second_core:
                    notes["threads"] = 2
                    notes["speedup_over_one_core"] = walls["fused kernels"] / wall
                rows.append(Row("decode-profile", f"{preset} {size} decode step ({label})", wall, None, "", 1, notes))
    if kernel_choice().cpu == "numba":
        rows.append(gemv_stream_row(presets[0], size))
    return rows


@contextlib.contextmanager
def _quiet_profiler():
    """torch.profiler over the CPU, without the two "USDT: ... profiler_start/stop" lines that torch
    2.13's kineto writes to stderr at its start and stop (stderr goes to /dev/null only around those)."""
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
    with _stderr_silenced():
        profiler.__enter__()
    try:
        yield profiler
    finally:
        with _stderr_silenced():
            profiler.__exit__(None, None, None)


@contextlib.contextmanager
def _stderr_silenced():
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _kernels(choice: str):
    return lambda: kernels(choice)


@contextlib.contextmanager
def _second_core():
    """Two torch threads and the GEMV worker serving (waited for: it needs the GIL to start)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with kernels(""):
            decode_worker.WORKER.wake_and_wait()
            yield
    finally:
        torch.set_num_threads(threads)
