"""`hybridlm sweep CONFIG`: design-space exploration; results table, results.json/.csv, Pareto plot.

hybridlm sweep configs/sweep_recall_ratio.json --out runs/sweep
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from .common import format_table, human, progress_bar

HELP = "design-space exploration: train a grid of hybrids, report quality vs cost, draw the Pareto frontier"


def add_arguments(parser) -> None:
    from .. import settings
    from ..recipe import TrainConfig

    parser.add_argument("config", help="a sweep file (JSON): base config, training recipe, axes (see configs/)")
    parser.add_argument("--out", help="directory for results.json, results.csv and pareto.png (resumable)")
    parser.add_argument("--list", action="store_true", help="print the points and exit without training")
    group = parser.add_argument_group("recipe", "override the sweep file's training recipe for every point")
    settings.add_flags(group, TrainConfig, skip=("task_settings", "parallel", "tensorboard", "keep"))


def run(args) -> None:
    from .. import settings
    from ..recipe import TrainConfig
    from ..sweep import load_spec, pareto_front, resolve_points, run_sweep

    spec = load_spec(args.config)
    changes = settings.given(args, TrainConfig, skip=("task_settings", "parallel", "tensorboard", "keep"))
    if changes:
        spec["train"] = {**spec.get("train", {}), **changes}
    if args.list:
        for number, (overrides, config, recipe) in enumerate(resolve_points(spec), 1):
            print(number, overrides, f"({config.pattern}, {recipe.steps} steps)")
        return
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    total = len(resolve_points(spec))
    with progress_bar(total, "sweep") as bar:

        def report(row: dict) -> None:
            line = (
                f"{row['pattern']:<24} {row['overrides']}: accuracy {row['accuracy']:.3f}, loss {row['loss']:.3f} "
                f"({row['seconds']:.0f} s)"
            )
            if bar is None:
                print(line, flush=True)
            else:
                bar.write(line)
                bar(bar.done + 1, total)

        rows = run_sweep(spec, args.out, progress=report)
    print()
    print(
        format_table(
            ["pattern", "r", "params", "accuracy", "loss", "train FLOPs/token", f"cache @ {rows[0]['cost_seq_len']:,}"],
            [
                [
                    row["pattern"],
                    f"{row['attention_ratio']:.2f}",
                    human(row["params"]),
                    f"{row['accuracy']:.3f}",
                    f"{row['loss']:.3f}",
                    human(row["train_flops_per_token"]),
                    human(row["cache_bytes"]) + "B",
                ]
                for row in rows
            ],
        )
    )
    for cost in ("train_flops_per_token", "cache_bytes"):
        front = ", ".join(f"{row['pattern']} ({row['accuracy']:.3f})" for row in pareto_front(rows, cost))
        print(f"\nPareto frontier, accuracy vs {cost.replace('_', ' ')}: {front}")
    if args.out:
        from ..analysis.plots import plot_pareto
        from ..ownership import own

        _write_csv(rows, Path(args.out) / "results.csv")
        plot = plot_pareto(rows, Path(args.out) / "pareto.png")
        own(args.out, "results.csv", "pareto.png", kind="sweep")
        print(f"\nwrote {Path(args.out) / 'results.json'}, results.csv and {plot}")


def _write_csv(rows: list[dict], path: Path) -> None:
    columns = [key for key in rows[0] if key != "overrides"] + ["overrides"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "overrides": str(row["overrides"])})
