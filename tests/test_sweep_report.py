"""Sweep reports: seeds as mean ± sd, best over learning rate, every varied axis a column and a
label, axes that change nothing pruned (decided on the built model), readable plot ticks."""

import csv
import json
import statistics

import pytest

from hybridlm.cli import main
from hybridlm.sweep import plan_runs, run_sweep, search_space, sweep_points
from hybridlm.sweep_report import axis_label, best_over_lr, pruned_notes, summarize, varied_axes

BASE = {"d_model": 16, "n_heads": 2, "vocab_size": 64, "mamba": {"d_state": 4}, "moe": {"n_experts": 4}}
TRAIN = {
    "task": "mqar",
    "task_settings": {"vocab_size": 64, "seq_len": 16, "n_pairs": 2},
    "steps": 1,
    "batch_size": 4,
    "eval_batches": 1,
    "warmup_steps": 0,
}


def _row(accuracy, seed=0, **overrides):
    return {
        "key": f"{overrides}-{seed}",
        "overrides": overrides,
        "seed": seed,
        "pattern": overrides.get("pattern", "M M"),
        "attention_ratio": 0.0,
        "pruned": [],
        "accuracy": accuracy,
        "loss": 1 - accuracy,
        "cost_seq_len": 1024,
        **dict.fromkeys(("params", "active_params", "train_flops_per_token", "decode_flops_per_token"), 10),
        **{"cache_bytes": 5, "tokens": 64},
    }


def test_seeds_are_replicates_with_mean_and_sd():
    rows = [_row(a, seed, **{"train.lr": 0.001}) for seed, a in enumerate([0.2, 0.4, 0.9])]
    (point,) = summarize(rows)
    assert point["n"] == 3 and point["seeds"] == [0, 1, 2]
    assert point["accuracy"] == pytest.approx(0.5) and point["accuracy_sd"] == pytest.approx(
        statistics.stdev([0.2, 0.4, 0.9])
    )
    assert summarize(rows[:1])[0]["accuracy_sd"] == 0.0


def test_best_over_lr_picks_each_points_best_rate():
    rows = [
        _row(0.3, pattern="M M", **{"train.lr": 0.001}),
        _row(0.6, pattern="M M", **{"train.lr": 0.003}),
        _row(0.8, pattern="M A", **{"train.lr": 0.001}),
        _row(0.1, pattern="M A", **{"train.lr": 0.003}),
    ]
    best = best_over_lr(summarize(rows))
    assert [(p["pattern"], p["best_lr"], p["accuracy"], p["lrs"]) for p in best] == [
        ("M M", 0.003, 0.6, 2),
        ("M A", 0.001, 0.8, 2),
    ]
    assert varied_axes(rows) == ["pattern", "train.lr"]
    assert axis_label(summarize(rows)[1], ["pattern", "train.lr"]) == "M M, lr=0.003"


@pytest.mark.parametrize(
    "patterns, axis, values, inert_for",
    [
        (["M M", "A A"], "mamba.d_state", [4, 8], ["A A"]),
        (["A A", "L L"], "attention.window", [4, 8], ["A A"]),  # a window below the training length
        (["L L"], "attention.window", [32, 64], []),  # beyond the 16 trained tokens, but the cache holds a window
        (["MF MF", "ME ME"], "moe.n_experts", [2, 4], ["MF MF"]),
    ],
)
def test_axes_that_change_nothing_are_pruned(patterns, axis, values, inert_for):
    spec = {"base": BASE, "train": TRAIN, "grid": {"pattern": patterns, axis: values}, "cost_seq_len": 16}
    runs = [run for plan in plan_runs(spec, sweep_points(spec), search_space(spec)) for run in plan]
    rows = [{"pattern": run.config.pattern, "overrides": run.overrides, "pruned": list(run.pruned)} for run in runs]
    for row in rows:
        assert (axis in row["pruned"]) == (row["pattern"] in inert_for)
    assert len({run.key for run in runs}) == len(runs) - len(inert_for) * (len(values) - 1)  # they share a run
    assert pruned_notes(rows) == [f"{axis} changes nothing for {p}: trained once (at {values[0]})" for p in inert_for]


def test_every_varied_axis_is_a_column_a_csv_field_and_a_label(tmp_path, capsys):
    spec = {
        "base": BASE,
        "train": TRAIN,
        "grid": {"pattern": ["M M", "A A"], "train.lr": [0.001, 0.003], "mamba.d_state": [4, 8]},
        "seeds": [0, 1],
        "cost_seq_len": 1024,
    }
    (tmp_path / "sweep.json").write_text(json.dumps(spec))
    assert main(["sweep", str(tmp_path / "sweep.json"), "--out", str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[lines.index("") + 1].split()
    assert header[:6] == ["pattern", "r", "train.lr", "mamba.d_state", "seeds", "params"]
    table = lines[lines.index("") + 3 : lines.index("") + 9]
    assert len(table) == 6 and len(set(table)) == 6  # two learning rates are two rows; A A once per rate
    assert all(" ± " in line for line in table) and sum("–" in line for line in table) == 2
    assert "pruned: mamba.d_state changes nothing for A A: trained once (at 4)" in lines
    assert any(line.startswith("best over learning rate") for line in lines)
    with (tmp_path / "out" / "results.csv").open() as handle:
        records = list(csv.DictReader(handle))
    assert len(records) == 12 and {"train.lr", "mamba.d_state", "seed", "params", "tokens", "loss"} <= set(records[0])
    assert {record["train.lr"] for record in records} == {"0.001", "0.003"}


@pytest.mark.parametrize(
    "flops, cache",
    [
        ([694e3, 672e3, 651e3, 608e3], [5.5e3, 4.27e6, 8.53e6, 17.05e6]),  # docs/sweep.md's sweep
        ([85e3, 90e3, 101e3, 117e3], [1e3, 1e3, 1e3, 1e3]),
        ([1e5, 3e6, 2e8, 9e9], [2e3, 3e4, 5e5, 8e6]),
    ],
)
def test_the_pareto_plots_tick_labels_do_not_overlap(flops, cache):
    from hybridlm.analysis.plots import _pyplot, pareto_figure

    points = [
        {"pattern": f"P{i}", "attention_ratio": i / 4, "accuracy": i / 5, "train_flops_per_token": f, "cache_bytes": c}
        for i, (f, c) in enumerate(zip(flops, cache))
    ]
    figure = pareto_figure(points)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    for axis in figure.axes[:2]:
        frame = axis.get_window_extent(renderer)
        labels = [label for label in axis.get_xticklabels(minor=True) + axis.get_xticklabels() if label.get_text()]
        boxes = sorted((label.get_window_extent(renderer) for label in labels), key=lambda box: box.x0)
        shown = [box for box in boxes if box.x1 >= frame.x0 and box.x0 <= frame.x1]
        assert 1 <= len(shown) <= 4
        assert all(right.x0 - left.x1 >= 8 for left, right in zip(shown, shown[1:]))  # at least 8 px apart
    _pyplot().close(figure)


def test_grid_rows_of_one_seed_keep_the_old_shape(tmp_path):
    spec = {"base": BASE, "train": TRAIN, "grid": {"pattern": ["M M"]}, "cost_seq_len": 1024}
    (row,) = run_sweep(spec, tmp_path)
    assert row["seed"] == 0 and row["pruned"] == [] and row["overrides"] == {"pattern": "M M"}


def test_a_point_with_a_diverged_run_has_no_quality_and_loses_no_comparison():
    diverged = {**_row(0.0, seed=1, **{"train.lr": 3.0}), "accuracy": None, "loss": None, "diverged": "step 2: ..."}
    rows = [_row(0.3, **{"train.lr": 0.001}), _row(0.5, **{"train.lr": 3.0}), diverged]
    low, high = summarize(rows)
    assert (low["diverged"], low["accuracy"]) == (0, 0.3)
    assert (high["diverged"], high["n"], high["accuracy"], high["loss_sd"]) == (1, 2, None, None)
    (best,) = best_over_lr([low, high])
    assert best["best_lr"] == 0.001  # the rate that diverged once is not a contender
    (only,) = best_over_lr([high])
    assert only["best_lr"] == 3.0 and only["accuracy"] is None  # unless every rate diverged
