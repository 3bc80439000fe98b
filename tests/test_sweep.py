"""Design-space sweeps: pattern generation, grids, Pareto frontiers, resumable runs."""

import json
from pathlib import Path

import pytest

from hybridlm import ConfigError
from hybridlm.cli import main
from hybridlm.pattern import attention_ratio, layer_chars
from hybridlm.sweep import hybrid_pattern, pareto_front, run_sweep, sweep_points


@pytest.mark.parametrize(
    "layers, ratio, placement, expected",
    [
        (8, 1 / 8, "spread", "M M M M A M M M"),  # Jamba's offset 4
        (8, 0.25, "spread", "M M A M M M A M"),
        (4, 0.5, "bottom", "A A M M"),
        (4, 0.5, "top", "M M A A"),
        (4, 0.0, "spread", "M M M M"),
        (3, 1.0, "top", "A A A"),
    ],
)
def test_hybrid_patterns_place_attention(layers, ratio, placement, expected):
    assert hybrid_pattern(layers, ratio, placement) == expected


def test_random_placement_is_seeded_and_shared_attention_feeds_the_ssm():
    first = hybrid_pattern(12, 0.25, "random", seed=3)
    assert first == hybrid_pattern(12, 0.25, "random", seed=3) and layer_chars(first).count("A") == 3
    shared = hybrid_pattern(4, 0.25, "spread", ssm="D", attn="S", ffn="F")
    assert shared == "DF DF SDF DF" and attention_ratio(layer_chars(shared)) == 1 / 5


def test_points_are_patterns_times_the_grid():
    spec = {"hybrids": {"layers": 2, "ratios": [0, 1], "placements": ["spread"]}, "grid": {"mamba.d_state": [4, 8]}}
    assert sweep_points(spec) == [
        {"pattern": "M M", "mamba.d_state": 4},
        {"pattern": "M M", "mamba.d_state": 8},
        {"pattern": "A A", "mamba.d_state": 4},
        {"pattern": "A A", "mamba.d_state": 8},
    ]
    with pytest.raises(ConfigError, match="unknown sweep keys: grids"):
        sweep_points({"grids": {}})
    with pytest.raises(ConfigError, match="varies nothing"):
        sweep_points({})


def test_pareto_front_keeps_the_undominated():
    rows = [
        {"name": n, "accuracy": a, "cost": c}
        for n, a, c in [
            ("cheap-bad", 0.1, 1),
            ("mid", 0.5, 2),
            ("dominated", 0.4, 3),
            ("best", 0.9, 10),
            ("tie", 0.5, 2),
        ]
    ]
    assert [r["name"] for r in pareto_front(rows, "cost")] == ["cheap-bad", "mid", "tie", "best"]


SPEC = {
    "base": {"d_model": 32, "n_heads": 2, "vocab_size": 64, "mamba": {"d_state": 4}},
    "train": {
        "task": "mqar",
        "task_settings": {"vocab_size": 64, "seq_len": 16, "n_pairs": 2},
        "steps": 3,
        "batch_size": 4,
        "eval_batches": 1,
        "warmup_steps": 1,
    },
    "grid": {"pattern": ["M M", "M A"]},
    "cost_seq_len": 1024,
}


def test_sweep_measures_every_point_and_resumes(tmp_path):
    calls = []
    rows = run_sweep(SPEC, tmp_path, progress=calls.append)
    assert [row["pattern"] for row in rows] == ["M M", "M A"] and len(calls) == 2
    ssm, hybrid = rows
    assert hybrid["attention_ratio"] == 0.5 and ssm["attention_ratio"] == 0.0
    assert hybrid["cache_bytes"] > ssm["cache_bytes"]  # the KV cache of 1024 tokens
    assert ssm["tokens"] == 3 * 4 * 16 and 0 <= ssm["accuracy"] <= 1 and ssm["loss"] > 0
    again = run_sweep(SPEC, tmp_path, progress=calls.append)  # nothing left to train
    assert again == rows and len(calls) == 2
    assert json.loads((tmp_path / "results.json").read_text()) == rows


def test_sweep_cli_writes_results_and_plot(tmp_path, capsys):
    spec_path = tmp_path / "sweep.json"
    spec_path.write_text(json.dumps(SPEC))
    assert main(["sweep", str(spec_path), "--out", str(tmp_path / "out"), "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "Pareto frontier, accuracy vs cache bytes" in out
    assert (tmp_path / "out" / "pareto.png").stat().st_size > 0
    header = (tmp_path / "out" / "results.csv").read_text().splitlines()[0].split(",")
    assert {"params", "tokens", "loss", "attention_ratio"} <= set(header)  # what the scaling fit reads
    assert main(["sweep", str(tmp_path / "missing.json")]) == 2


def test_train_axes_vary_the_recipe(tmp_path):
    spec = {**SPEC, "grid": {"pattern": ["M A"], "train.steps": [1, 2]}}
    rows = run_sweep(spec)
    assert [row["tokens"] for row in rows] == [1 * 4 * 16, 2 * 4 * 16]
    assert [row["overrides"] for row in rows] == [
        {"pattern": "M A", "train.steps": 1},
        {"pattern": "M A", "train.steps": 2},
    ]


@pytest.mark.parametrize("path", sorted(str(p) for p in Path(__file__).parent.parent.glob("configs/sweep_*.json")))
def test_every_shipped_sweep_resolves(path, capsys):
    sampler = "grid" if "search" not in json.loads(Path(path).read_text()) else "tpe"
    assert main(["sweep", path, "--sampler", sampler, "--list"]) == 0
    assert capsys.readouterr().out


def test_a_diverging_run_is_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    """A learning rate that makes the loss non-finite: its row says why, with no loss or accuracy; the
    other points train, the report and the frontiers leave it out, and resuming does not retrain it."""
    train = {**SPEC["train"], "warmup_steps": 0}
    spec = {**SPEC, "train": train, "grid": {"pattern": ["M A"], "train.lr": [1e-3, 1e6]}}
    spec_path = tmp_path / "sweep.json"
    spec_path.write_text(json.dumps(spec))
    assert main(["sweep", str(spec_path), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    good, diverged = json.loads((tmp_path / "out" / "results.json").read_text())
    assert good["diverged"] is None and 0 <= good["accuracy"] <= 1
    assert diverged["accuracy"] is None and diverged["loss"] is None and "non-finite" in diverged["diverged"]
    assert "seed 0: diverged (step " in out and "1e+06     13.86K  diverged  diverged" in out
    assert "Pareto frontier, accuracy vs cache bytes: lr=0.001 (0." in out
    assert (tmp_path / "out" / "pareto.png").stat().st_size > 0
    trained = []
    assert run_sweep(spec, tmp_path / "out", progress=trained.append) == [good, diverged] and trained == []


def test_a_sweep_whose_every_run_diverged_reports_and_resumes(tmp_path, capsys):
    train = {**SPEC["train"], "warmup_steps": 0, "lr": 1e6}
    spec_path = tmp_path / "sweep.json"
    spec_path.write_text(json.dumps({**SPEC, "train": train, "grid": {"pattern": ["M A"]}}))
    command = ["sweep", str(spec_path), "--out", str(tmp_path / "out")]
    assert main(command) == 0
    out = capsys.readouterr().out
    assert "every run diverged: no plot" in out and not (tmp_path / "out" / "pareto.png").exists()
    assert main(command) == 0  # the folder is the sweep's own: run again, nothing to train
    assert "every run diverged" in capsys.readouterr().out


def test_results_csv_takes_every_rows_fields(tmp_path, capsys):
    """Rows saved before a field existed (no `diverged`) resume beside new ones: the CSV has the
    union of the fields, an empty cell where a row lacks one."""
    out = tmp_path / "out"
    spec_path = tmp_path / "sweep.json"
    spec_path.write_text(json.dumps(SPEC))
    assert main(["sweep", str(spec_path), "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())
    del rows[1]["diverged"]  # as an older hybridlm wrote it
    (out / "results.json").write_text(json.dumps(rows))
    assert main(["sweep", str(spec_path), "--out", str(out)]) == 0
    header, first, second = (out / "results.csv").read_text().splitlines()[:3]
    column = header.split(",").index("diverged")
    assert first.split(",")[column] == second.split(",")[column] == ""
