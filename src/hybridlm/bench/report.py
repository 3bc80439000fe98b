"""Benchmark rows as a text table (what `hybridlm bench` and benchmarks/*.py print)."""

from __future__ import annotations

from ..tables import format_table


def format_rows(rows) -> str:
    table = []
    for row in rows:
        ratio = "" if row.ratio is None else f"{row.ratio:.2f}x"
        baseline = "" if row.baseline is None else f"{row.baseline_name} {_seconds(row.baseline)}"
        notes = "  ".join(f"{key}={_value(value)}" for key, value in row.notes.items())
        table.append([row.name, "" if row.ours is None else _seconds(row.ours), baseline, ratio, notes])
    return format_table(["benchmark", "ours", "baseline", "speed-up", "notes"], table)


def _seconds(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _value(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
