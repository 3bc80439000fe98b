"""`hybridlm sweep CONFIG`: design-space exploration; results table, results.json/.csv, Pareto plot.

hybridlm sweep configs/sweep_recall_ratio.json --out runs/sweep
hybridlm sweep configs/sweep_lr_tpe.json --sampler tpe --trials 12 --workers 2 --out runs/tpe
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from .common import format_table, human, progress_bar

HELP = "design-space exploration: train a grid or an Optuna search of hybrids, report quality vs cost (Pareto)"
SKIP = ("task_settings", "parallel", "tensorboard", "keep", "init_from")


def add_arguments(parser) -> None:
    from .. import settings
    from ..recipe import TrainConfig
    from ..sweep import SAMPLERS

    parser.add_argument("config", help="a sweep file (JSON): base config, training recipe, axes (see configs/)")
    parser.add_argument("--out", help="directory for results.json, study.db, results.csv and pareto.png (resumable)")
    parser.add_argument("--list", action="store_true", help="resolve and print the points, and exit without training")
    parser.add_argument("--sampler", choices=SAMPLERS, default="grid", help="grid (every point), or Optuna's")
    parser.add_argument("--trials", type=int, help="points to sample (random, tpe, nsga2)")
    parser.add_argument("--workers", type=int, default=1, help="train points in this many processes (1 thread each)")
    group = parser.add_argument_group("recipe", "override the sweep file's training recipe for every point")
    settings.add_flags(group, TrainConfig, skip=SKIP)


def run(args) -> None:
    from .. import settings
    from ..config import ConfigError
    from ..recipe import TrainConfig
    from ..sweep import check_space, load_spec, plan_runs, resolve_points, run_sweep, sweep_points

    spec = load_spec(args.config)
    changes = settings.given(args, TrainConfig, skip=SKIP)
    if changes:
        spec["train"] = {**spec.get("train", {}), **changes}
    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: give at least 1")
    if args.list:
        space = check_space(spec)
        if args.sampler == "grid":
            plans = plan_runs(spec, sweep_points(spec), space)
            for number, ((overrides, config, recipe), runs) in enumerate(zip(resolve_points(spec), plans), 1):
                pruned = f"; changes nothing: {', '.join(runs[0].pruned)}" if runs[0].pruned else ""
                print(number, overrides, f"({config.pattern}, {recipe.steps} steps, {len(runs)} seed(s){pruned})")
            print(f"{len({run.key for runs in plans for run in runs})} runs to train")
        else:
            for axis, dimension in space.items():
                print(f"{axis}: {json.dumps(dimension)}")
        return
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    total = len(sweep_points(spec)) if args.sampler == "grid" else args.trials
    with progress_bar(total or 0, "sweep") as bar:

        def report(row: dict) -> None:
            if row.get("diverged"):
                outcome = f"diverged ({row['diverged']})"
            else:
                outcome = f"accuracy {row['accuracy']:.3f}, loss {row['loss']:.3f}"
            line = f"{row['pattern']:<24} {row['overrides']} seed {row['seed']}: {outcome} ({row['seconds']:.0f} s)"
            if bar is None:
                print(line, flush=True)
            else:
                bar.write(line)
                bar(bar.done + 1, max(total or 0, bar.done + 1))

        rows = run_sweep(spec, args.out, report, args.sampler, args.trials, args.workers)
    _print_report(rows, args.sampler)
    if args.out:
        from ..analysis.plots import plot_pareto
        from ..ownership import own
        from ..sweep_report import axis_label, finished, summarize, varied_axes

        _write_csv(rows, Path(args.out) / "results.csv")
        own(args.out, "results.csv", kind="sweep")  # before the plot: a failed plot leaves no foreign file
        points, axes = summarize(rows), varied_axes(rows)
        if not finished(points):
            print(f"\nwrote {Path(args.out) / 'results.json'} and results.csv (every run diverged: no plot)")
            return
        labels = [axis_label(point, axes) for point in points]
        plot = plot_pareto(points, Path(args.out) / "pareto.png", labels=labels)
        own(args.out, "pareto.png", kind="sweep")
        print(f"\nwrote {Path(args.out) / 'results.json'}, results.csv and {plot}")


def _print_report(rows: list[dict], sampler: str) -> None:
    from ..sweep_optuna import OBJECTIVES
    from ..sweep_report import (
        LR_AXIS,
        axis_label,
        best_over_lr,
        finished,
        non_dominated,
        pruned_notes,
        summarize,
        varied_axes,
    )

    axes = varied_axes(rows)
    points = summarize(rows)
    print()
    print(_table(points, axes))
    for note in pruned_notes(rows):
        print(f"pruned: {note}")
    if LR_AXIS in axes:
        print("\nbest over learning rate (each point at the train.lr of its best mean accuracy):")
        print(_table(best_over_lr(points), [axis for axis in axes if axis != LR_AXIS], best_lr=True))
    for cost in ("train_flops_per_token", "cache_bytes"):
        front = non_dominated(finished(points), {"accuracy": "maximize", cost: "minimize"})
        shown = ", ".join(f"{axis_label(p, axes)} ({p['accuracy']:.3f})" for p in sorted(front, key=lambda p: p[cost]))
        print(f"\nPareto frontier, accuracy vs {cost.replace('_', ' ')}: {shown}")
    if sampler == "nsga2":
        front = non_dominated(finished(points), OBJECTIVES)
        print(
            f"\nNSGA-II non-dominated set ({', '.join(OBJECTIVES)}): " + "; ".join(axis_label(p, axes) for p in front)
        )


def _table(points: list[dict], axes: list[str], best_lr: bool = False) -> str:
    columns = [axis for axis in axes if axis != "pattern"]
    replicated = any(point["n"] > 1 for point in points)
    headers = ["pattern", "r", *columns, *(["best lr", "lrs"] if best_lr else []), *(["seeds"] if replicated else [])]
    headers += ["params", "accuracy", "loss", "train FLOPs/token", f"cache @ {points[0]['cost_seq_len']:,}"]
    table = []
    for point in points:
        values = ["–" if axis in point["pruned"] else _value(point["overrides"].get(axis, "–")) for axis in columns]
        table.append(
            [
                point["pattern"],
                f"{point['attention_ratio']:.2f}",
                *values,
                *([_value(point["best_lr"]), point["lrs"]] if best_lr else []),
                *([point["n"]] if replicated else []),
                human(point["params"]),
                *(_metric(point, metric, replicated) for metric in ("accuracy", "loss")),
                human(point["train_flops_per_token"]),
                human(point["cache_bytes"]) + "B",
            ]
        )
    return format_table(headers, table)


def _metric(point: dict, metric: str, replicated: bool) -> str:
    """'0.812', '0.812 ± 0.010' over seeds, or 'diverged' ('diverged 1/3' of several seeds)."""
    if point[metric] is None:
        return "diverged" + (f" {point['diverged']}/{point['n']}" if replicated else "")
    return f"{point[metric]:.3f}" + (f" ± {point[f'{metric}_sd']:.3f}" if replicated else "")


def _value(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _write_csv(rows: list[dict], path: Path) -> None:
    """One line per run: a column per varied axis, the seed, then every measured field."""
    from ..sweep_report import varied_axes

    fields = [key for key in dict.fromkeys(key for row in rows for key in row) if key not in ("overrides", "pruned")]
    axes = [axis for axis in varied_axes(rows) if axis not in fields]  # `pattern` is a field already
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*axes, *fields, "pruned", "overrides"])
        writer.writeheader()
        for row in rows:
            values = {axis: "" if axis in row["pruned"] else row["overrides"].get(axis, "") for axis in axes}
            extra = {"pruned": " ".join(row["pruned"]), "overrides": json.dumps(row["overrides"])}
            writer.writerow({**values, **{key: row.get(key, "") for key in fields}, **extra})
