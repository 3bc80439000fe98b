"""The Pareto frontier of quality against a cost, over result rows (sweeps, plots)."""

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
