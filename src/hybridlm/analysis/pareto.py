"""The Pareto frontier of quality against a cost, and the non-dominated set over several objectives,
over result rows (sweeps, plots)."""

from __future__ import annotations


def pareto_front(rows: list[dict], cost: str, quality: str = "accuracy") -> list[dict]:
    """The rows no other row beats on both: at least as good quality at strictly lower cost, or
    better quality at no more cost. Sorted by cost."""
    front = []
    for row in rows:
        dominated = any(
            (other[quality] >= row[quality] and other[cost] < row[cost])
            or (other[quality] > row[quality] and other[cost] <= row[cost])
            for other in rows
        )
        if not dominated:
            front.append(row)
    return sorted(front, key=lambda row: row[cost])


def non_dominated(rows: list[dict], objectives: dict[str, str]) -> list[dict]:
    """The rows no other row dominates (at least as good on every objective and better on one), in
    their order. `objectives` maps a field to "maximize" or "minimize"."""

    def at_least_as_good(a: dict, b: dict, field: str) -> bool:
        return a[field] >= b[field] if objectives[field] == "maximize" else a[field] <= b[field]

    def dominates(a: dict, b: dict) -> bool:
        return all(at_least_as_good(a, b, f) for f in objectives) and any(
            not at_least_as_good(b, a, f) for f in objectives
        )

    return [row for row in rows if not any(dominates(other, row) for other in rows)]
