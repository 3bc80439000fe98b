"""Sweeps on Optuna: every sampler, resuming an interrupted study, retraining a changed recipe,
NSGA-II's non-dominated set, worker processes, the no-extra grid loop with the same rows."""

import json

import pytest

from hybridlm import ConfigError
from hybridlm.cli import main
from hybridlm.sweep import run_sweep
from hybridlm.sweep_optuna import OBJECTIVES, best_keys, study_name
from hybridlm.sweep_report import non_dominated, summarize

pytest.importorskip("optuna")

SPEC = {
    "base": {"d_model": 16, "n_heads": 2, "vocab_size": 64, "mamba": {"d_state": 4}},
    "train": {
        "task": "mqar",
        "task_settings": {"vocab_size": 64, "seq_len": 16, "n_pairs": 2},
        "steps": 1,
        "batch_size": 4,
        "eval_batches": 1,
        "warmup_steps": 0,
    },
    "grid": {"pattern": ["M M", "M A"]},
    "search": {"train.lr": {"log_uniform": [1e-4, 1e-2]}},
    "cost_seq_len": 1024,
}


class Interrupt(KeyboardInterrupt):
    pass


def stop_after(count: int, trained: list):
    def progress(row):
        trained.append(row["key"])
        if len(trained) == count:
            raise Interrupt

    return progress


def test_an_interrupted_study_resumes_training_only_the_missing_trial(tmp_path):
    first = []
    with pytest.raises(Interrupt):
        run_sweep(SPEC, tmp_path, stop_after(1, first), sampler="random", trials=2)
    assert len(first) == 1 and (tmp_path / "study.db").exists()
    assert "study.db" in json.loads((tmp_path / "hybridlm.json").read_text())["owns"]
    resumed = []
    rows = run_sweep(SPEC, tmp_path, resumed.append, sampler="random", trials=2)
    assert len(resumed) == 1 and resumed[0]["key"] != first[0]  # the first trial's run was not retrained
    assert [row["key"] for row in rows] == [first[0], resumed[0]["key"]]
    again = []
    assert run_sweep(SPEC, tmp_path, again.append, sampler="random", trials=2) == rows and again == []
    more = run_sweep(SPEC, tmp_path, again.append, sampler="random", trials=3)  # one more trial, one more run
    assert len(again) == 1 and more[:2] == rows and len(more) == 3


def test_the_same_sweep_with_a_changed_recipe_retrains(tmp_path):
    rows = run_sweep(SPEC, tmp_path, sampler="tpe", trials=2)
    changed = {**SPEC, "train": {**SPEC["train"], "steps": 2}}
    trained = []
    again = run_sweep(changed, tmp_path, trained.append, sampler="tpe", trials=2)
    assert len(trained) == 2 and {row["key"] for row in again}.isdisjoint(row["key"] for row in rows)
    assert [row["tokens"] for row in again] == [2 * 4 * 16] * 2
    assert len(json.loads((tmp_path / "results.json").read_text())) == 4  # both recipes' rows are kept


@pytest.mark.parametrize("sampler, trials", [("grid", None), ("random", 2), ("tpe", 2), ("nsga2", 2)])
def test_each_sampler_runs(sampler, trials):
    spec = {**SPEC, "search": {"train.lr": {"choice": [1e-3, 3e-3]}}} if sampler == "grid" else SPEC
    rows = run_sweep(spec, sampler=sampler, trials=trials)
    assert len(rows) == (4 if sampler == "grid" else 2)
    assert all(0 <= row["accuracy"] <= 1 and row["overrides"]["pattern"] in ("M M", "M A") for row in rows)
    if sampler != "grid":
        assert all(1e-4 <= row["overrides"]["train.lr"] <= 1e-2 for row in rows)


def test_sampler_arguments_are_checked():
    with pytest.raises(ConfigError, match="needs --trials"):
        run_sweep(SPEC, sampler="tpe")
    with pytest.raises(ConfigError, match="the grid runs choices only"):
        run_sweep(SPEC)  # a log-uniform learning rate cannot be enumerated
    with pytest.raises(ConfigError, match="search.train.lr: give one of choice"):
        run_sweep({**SPEC, "search": {"train.lr": {"normal": [0, 1]}}}, sampler="random", trials=1)
    with pytest.raises(ConfigError, match="need 0 < low < high"):
        run_sweep({**SPEC, "search": {"train.lr": {"log_uniform": [0, 1]}}}, sampler="random", trials=1)


def test_nsga2_returns_the_non_dominated_set(tmp_path):
    spec = {**SPEC, "grid": {"pattern": ["M M", "M A", "A A"]}}
    rows = run_sweep(spec, tmp_path, sampler="nsga2", trials=4)
    points = summarize(rows)
    front = non_dominated(points, OBJECTIVES)
    for point in front:  # nothing in the sweep is at least as good on all three and better on one
        for other in points:
            better = (
                other["accuracy"] >= point["accuracy"]
                and other["train_flops_per_token"] <= point["train_flops_per_token"]
                and other["cache_bytes"] <= point["cache_bytes"]
            )
            strictly = (
                other["accuracy"] > point["accuracy"]
                or other["train_flops_per_token"] < point["train_flops_per_token"]
                or other["cache_bytes"] < point["cache_bytes"]
            )
            assert not (better and strictly)
    keys = {key for keys in best_keys(tmp_path, spec, "nsga2") for key in keys}
    assert keys == {row["key"] for row in rows if any(row["overrides"] == p["overrides"] for p in front)}
    assert any(point["pattern"] == "M M" for point in front)  # the cheapest cache is never dominated on it


GRID = {**SPEC, "search": {}, "grid": {"pattern": ["M M", "M A"], "train.lr": [1e-3, 3e-3]}}


def _comparable(rows):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def test_two_workers_give_the_rows_of_one(tmp_path):
    one = run_sweep(GRID, tmp_path / "one")
    two = run_sweep(GRID, tmp_path / "two", workers=2)
    assert [row["key"] for row in two] == [row["key"] for row in one]
    for a, b in zip(_comparable(one), _comparable(two)):
        assert a.keys() == b.keys()
        for field in a:
            assert b[field] == (pytest.approx(a[field], rel=1e-4) if isinstance(a[field], float) else a[field])


def test_the_grid_loop_without_optuna_keeps_the_same_rows(tmp_path, monkeypatch):
    with_optuna = run_sweep(GRID, tmp_path / "optuna")
    monkeypatch.setattr("hybridlm.sweep_optuna.available", lambda: False)
    without = run_sweep(GRID, tmp_path / "plain")
    assert not (tmp_path / "plain" / "study.db").exists() and (tmp_path / "optuna" / "study.db").exists()
    assert _comparable(without) == _comparable(with_optuna)  # same keys, same training, same numbers
    trained = []
    run_sweep(GRID, tmp_path / "optuna", trained.append)  # the Optuna grid reuses the loop's bookkeeping
    assert trained == []


def test_the_cli_runs_a_search_and_lists_its_space(tmp_path, capsys):
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(SPEC))
    assert main(["sweep", str(path), "--sampler", "random", "--trials", "2", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "train.lr" in out.splitlines()[out.splitlines().index("") + 1]  # a column of the table
    assert main(["sweep", str(path), "--sampler", "tpe", "--list"]) == 0
    assert 'train.lr: {"log_uniform": [0.0001, 0.01]}' in capsys.readouterr().out
    path.write_text(json.dumps({**SPEC, "search": {"train.lrr": {"log_uniform": [1e-4, 1e-2]}}}))
    assert main(["sweep", str(path), "--sampler", "tpe", "--list"]) == 2
    assert "did you mean 'train.lr'?" in capsys.readouterr().err


def test_a_diverging_trial_fails_and_is_not_asked_again(tmp_path):
    """The grid through Optuna: the diverging point's trial is FAIL with its reason, the study still
    finishes every point, and a resumed study neither retrains nor re-asks it."""
    import optuna

    spec = {**SPEC, "train": {**SPEC["train"], "steps": 3}, "search": {"train.lr": {"choice": [1e-3, 1e6]}}}
    spec["grid"] = {"pattern": ["M A"]}
    rows = run_sweep(spec, tmp_path)
    assert [row["diverged"] is not None for row in rows] == [False, True]
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.load_study(study_name=study_name(spec, "grid"), storage=storage)
    states = sorted((trial.state.name, "diverged" in trial.user_attrs) for trial in study.trials)
    assert states == [("COMPLETE", False), ("FAIL", True)]
    trained = []
    assert run_sweep(spec, tmp_path, trained.append) == rows and trained == []
    assert len(optuna.load_study(study_name=study_name(spec, "grid"), storage=storage).trials) == 2
