"""Timing helpers and the machine ceilings measured in the same run (fp32 matmul peak, memory bandwidth).

Times are the best of a few repetitions after a warm-up: on a shared CPU the minimum is the
least noisy estimate of what the code costs; ratios between two implementations timed the same
way in one process are what the benchmarks report.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch


@dataclass
class Row:
    """One comparison: `ours` and `baseline` seconds for the same work; ratio > 1 means we are faster.
    `ours` is None for a row that only reports its notes (a cache's bytes)."""

    suite: str
    name: str
    ours: float | None
    baseline: float | None = None
    baseline_name: str = ""
    unit_count: float = 0.0  # tokens (or steps) the timed work covers, for rates
    notes: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        return None if self.baseline is None or self.ours is None or self.ours <= 0 else self.baseline / self.ours

    def to_dict(self) -> dict:
        return {
            "suite": self.suite,
            "name": self.name,
            "ours_s": self.ours,
            "baseline": self.baseline_name,
            "baseline_s": self.baseline,
            "ratio": self.ratio,
            "units": self.unit_count,
            **self.notes,
        }


def best_time(fn, repeats: int = 3, warmup: int = 1) -> float:
    """Minimum wall-clock seconds of `fn()` over `repeats` runs after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def alternated_times(fn_a, fn_b, repeats: int = 5, warmup: int = 1) -> tuple[float, float]:
    """Median seconds of `fn_a()` and of `fn_b()`, run in turn (a, b, a, b, ...) after `warmup` rounds:
    on a shared machine a slow spell then slows both sides, so their ratio stays honest."""
    for _ in range(warmup):
        fn_a(), fn_b()
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, times in ((fn_a, times_a), (fn_b, times_b)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times_a), statistics.median(times_b)


def matmul_peak(size: int = 1024, repeats: int = 5) -> float:
    """fp32 FLOP/s of a size^3 matrix product with the current torch thread count."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    seconds = best_time(lambda: torch.mm(a, b), repeats=repeats, warmup=2)
    return 2 * size**3 / seconds


def memory_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """Bytes/s of a large copy (one read and one write per element)."""
    source = torch.empty(megabytes * 2**20 // 4)
    target = torch.empty_like(source)
    seconds = best_time(lambda: target.copy_(source), repeats=repeats, warmup=1)
    return 2 * source.numel() * 4 / seconds
