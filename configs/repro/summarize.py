"""Summarize a sweep's results.json for docs/reproductions.md: the best learning rate per
(point, seed) by held-out accuracy, then mean +- sd of accuracy over seeds, one row per point.

python configs/repro/summarize.py runs/e1/results.json
"""

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def label(overrides: dict) -> str:
    parts = []
    for key, value in overrides.items():
        if key in ("train.lr", "train.seed"):
            continue
        if key == "train.task_settings":
            value = f"L={value['seq_len']} K={value['n_pairs']}"
        parts.append(f"{key}={value}" if key != "pattern" else str(value))
    return ", ".join(parts)


def main(path: str) -> None:
    rows = json.loads(Path(path).read_text())
    best = {}  # (point, seed) -> best row over lr
    for row in rows:
        key = (label(row["overrides"]), row["overrides"].get("train.seed", 0))
        if key not in best or row["accuracy"] > best[key]["accuracy"]:
            best[key] = row
    points = defaultdict(list)
    for (point, _), row in best.items():
        points[point].append(row)
    print("| point | seeds | accuracy (best over lr, mean +- sd) | best lr per seed | params | cache bytes | s/run |")
    print("|---|---|---|---|---|---|---|")
    for point, runs in points.items():
        accuracy = [r["accuracy"] for r in runs]
        sd = statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0
        lrs = ", ".join(str(r["overrides"].get("train.lr", "recipe")) for r in runs)
        seconds = statistics.mean(r["seconds"] for r in rows if label(r["overrides"]) == point)
        print(
            f"| {point} | {len(runs)} | {statistics.mean(accuracy):.3f} +- {sd:.3f} | {lrs} | {runs[0]['params']:,} "
            f"| {runs[0]['cache_bytes']:,} @ {runs[0]['cost_seq_len']:,} | {seconds:.0f} |"
        )


if __name__ == "__main__":
    main(sys.argv[1])
