"""A sweep's rows summarised: replicates (seeds) as mean and sample standard deviation, the best
learning rate per point (the Zoology protocol: each architecture at its best `train.lr`), the axes
that vary (each a column and a label), notes on axes pruned because they change nothing, and the
non-dominated set over several objectives."""

from __future__ import annotations

import json
import statistics

from .analysis.pareto import non_dominated as non_dominated  # re-exported beside the summaries

REPLICATE_AXIS = "train.seed"
LR_AXIS = "train.lr"
COSTS = ("params", "active_params", "train_flops_per_token", "decode_flops_per_token", "cache_bytes", "tokens")


def varied_axes(rows: list[dict]) -> list[str]:
    """The axes whose value differs between rows (seeds excepted), in order of first appearance."""
    axes = {}
    for row in rows:
        for axis in row["overrides"]:
            axes.setdefault(axis, set()).add(json.dumps(row["overrides"][axis]))
    return [axis for axis, values in axes.items() if len(values) > 1 and axis != REPLICATE_AXIS]


def summarize(rows: list[dict]) -> list[dict]:
    """One row per point: its runs over seeds as `n`, `accuracy`/`loss` means and `accuracy_sd`/
    `loss_sd` (sample sd; 0 for one seed), its costs (the same for every seed). `diverged` counts its
    runs that diverged; where any did, its metrics are None (a mean of the survivors would flatter it)."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        point = {axis: value for axis, value in row["overrides"].items() if axis != REPLICATE_AXIS}
        groups.setdefault(json.dumps(point, sort_keys=True), []).append(row)
    points = []
    for runs in groups.values():
        first = runs[0]
        point = {
            "overrides": {axis: v for axis, v in first["overrides"].items() if axis != REPLICATE_AXIS},
            "pattern": first["pattern"],
            "attention_ratio": first["attention_ratio"],
            "pruned": first.get("pruned", []),
            "n": len(runs),
            "seeds": [run["seed"] for run in runs],
            "cost_seq_len": first["cost_seq_len"],
            "diverged": sum(1 for run in runs if run.get("diverged")),
            **{cost: first[cost] for cost in COSTS},
        }
        for metric in ("accuracy", "loss"):
            values = [run[metric] for run in runs]
            if point["diverged"]:
                point[metric] = point[f"{metric}_sd"] = None
                continue
            point[metric] = statistics.fmean(values)
            point[f"{metric}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        points.append(point)
    return points


def finished(points: list[dict]) -> list[dict]:
    """The points with a quality to compare (none of their runs diverged): what frontiers are drawn over."""
    return [point for point in points if point["accuracy"] is not None]


def best_over_lr(points: list[dict]) -> list[dict]:
    """For each point of the other axes, the `train.lr` with the best mean accuracy (ties: the
    first; a rate whose runs diverged only where every rate did); `best_lr` holds it and `lrs` the
    rates tried. Points without an lr axis pass through."""
    groups: dict[str, list[dict]] = {}
    for point in points:
        rest = {axis: value for axis, value in point["overrides"].items() if axis != LR_AXIS}
        groups.setdefault(json.dumps(rest, sort_keys=True), []).append(point)
    best = []
    for candidates in groups.values():
        contenders = finished(candidates) or candidates[:1]
        winner = max(contenders, key=lambda point: point["accuracy"] or 0.0)  # max keeps the first of ties
        best.append({**winner, "best_lr": winner["overrides"].get(LR_AXIS), "lrs": len(candidates)})
    return best


def pruned_notes(rows: list[dict]) -> list[str]:
    """'AXIS changes nothing for PATTERN' for every varied axis pruned at every row of a pattern."""
    varied = set(varied_axes(rows)) | {axis for row in rows for axis in row.get("pruned", [])}
    by_pattern: dict[str, list[dict]] = {}
    for row in rows:
        by_pattern.setdefault(row["pattern"], []).append(row)
    notes = []
    for pattern, group in by_pattern.items():
        for axis in sorted(varied):
            if all(axis in row.get("pruned", []) for row in group):
                value = group[0]["overrides"][axis]
                notes.append(f"{axis} changes nothing for {pattern}: trained once (at {value})")
    return notes


def axis_label(point: dict, axes: list[str]) -> str:
    """The point's values on the varied axes, pattern first: 'M A, lr=0.001, d_state=8'."""
    parts = [point["pattern"]] if "pattern" in axes or not axes else []
    for axis in axes:
        if axis == "pattern":
            continue
        value = "–" if axis in point["pruned"] else point["overrides"].get(axis, "–")
        parts.append(
            f"{axis.split('.')[-1]}={value:.3g}" if isinstance(value, float) else f"{axis.split('.')[-1]}={value}"
        )
    return ", ".join(parts)
