"""A sweep's bookkeeping: one run (a point at one seed) trained and measured, the results file that
records runs by key, and training the missing runs in this process or in worker processes."""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from .analysis.cache_size import cache_bytes
from .analysis.flops import model_flops
from .analysis.params import active_parameters, build_meta
from .config import ModelConfig
from .ownership import check_replaceable, own
from .pattern import attention_ratio, format_pattern
from .recipe import TrainConfig, train_config

log = logging.getLogger(__name__)
RESULTS_FILE = "results.json"


@dataclass(frozen=True)
class Run:
    """One training of a sweep: `key` is point_key(config, recipe, cost_len)."""

    key: str
    overrides: dict
    config: ModelConfig
    recipe: TrainConfig
    cost_len: int
    pruned: tuple[str, ...] = ()


class Results:
    """The rows of out/results.json by key (in memory without `out`); each added row is written at
    once, atomically, in a directory marked as a sweep's. Rows of other recipes are kept."""

    def __init__(self, out=None):
        self.out = Path(out) if out is not None else None
        if self.out is not None:
            check_replaceable(self.out, "--out", writing="sweep")
        path = self.out / RESULTS_FILE if self.out is not None else None
        rows = json.loads(path.read_text()) if path is not None and path.exists() else []
        self.rows = {row["key"]: row for row in rows if "key" in row}

    def add(self, row: dict) -> None:
        self.rows[row["key"]] = row
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            temporary = self.out / f".{RESULTS_FILE}.tmp"
            temporary.write_text(json.dumps(list(self.rows.values()), indent=2) + "\n")
            temporary.replace(self.out / RESULTS_FILE)
            own(self.out, RESULTS_FILE, kind="sweep")


def measure(config: ModelConfig, recipe: TrainConfig, cost_len: int, final: dict, overrides: dict, seconds: float):
    """One result row: quality, size, compute and memory of a trained point (quality None if it diverged)."""
    model = build_meta(config)
    seq_len = recipe.task_settings.get("seq_len", recipe.seq_len)
    return {
        "overrides": overrides,
        "seed": recipe.seed,
        "pattern": format_pattern(config.pattern),
        "attention_ratio": attention_ratio(config.chars),
        "params": model.num_parameters(),
        "active_params": active_parameters(model),
        "tokens": recipe.steps * recipe.batch_size * seq_len,
        "loss": final["eval_loss"],
        "accuracy": final["eval_accuracy"],
        "train_flops_per_token": model_flops(config, seq_len).training_per_token,
        "decode_flops_per_token": model_flops(config, cost_len).decode_per_token,
        "cache_bytes": sum(row.total for row in cache_bytes(config, cost_len, 1, "float32")),
        "cost_seq_len": cost_len,
        "seconds": seconds,
    }


def train_one(run: Run) -> dict:
    """Train a run and measure it: its result row. A run whose loss or gradients turn non-finite is
    recorded, not raised: `diverged` holds the reason and its loss and accuracy are None, so the rest
    of the sweep goes on and a resumed sweep does not train it again (its seed would diverge again)."""
    from .train import TrainingDiverged, train

    start = time.perf_counter()
    try:
        final, diverged = train(run.config, run.recipe).final_eval, None
    except TrainingDiverged as stopped:
        final, diverged = {"eval_loss": None, "eval_accuracy": None}, str(stopped)
    row = measure(run.config, run.recipe, run.cost_len, final, run.overrides, time.perf_counter() - start)
    return {"key": run.key, **row, "diverged": diverged, "pruned": list(run.pruned)}


def _train_in_worker(config: dict, recipe: dict, run: dict) -> dict:
    """`train_one` in a worker process (plain data in and out)."""
    rebuilt = Run(config=ModelConfig.from_dict(config), recipe=train_config(recipe), **run)
    return train_one(rebuilt)


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def train_runs(runs: list[Run], results: Results, workers: int = 1, progress=None) -> dict[str, dict]:
    """Train the runs whose key is not in `results` yet (each key once), adding each row as it comes
    and calling `progress(row)`; with `workers` > 1 in that many processes of one torch thread each.
    Returns {key: row} for every run."""
    missing = list({run.key: run for run in runs if run.key not in results.rows}.values())
    if workers <= 1 or len(missing) <= 1:
        for run in missing:
            _record(train_one(run), results, progress)
    else:
        context = multiprocessing.get_context("spawn")  # a forked torch can hang in its thread pool
        with ProcessPoolExecutor(min(workers, len(missing)), mp_context=context, initializer=_one_thread) as pool:
            futures = [
                pool.submit(
                    _train_in_worker,
                    run.config.to_dict(),
                    dataclasses.asdict(run.recipe),
                    {"key": run.key, "overrides": run.overrides, "cost_len": run.cost_len, "pruned": run.pruned},
                )
                for run in missing
            ]
            for future in as_completed(futures):
                _record(future.result(), results, progress)
    return {run.key: results.rows[run.key] for run in runs}


def _record(row: dict, results: Results, progress) -> None:
    results.add(row)
    if row.get("diverged"):
        log.warning("%s %s diverged: %s", row["pattern"], row["overrides"], row["diverged"])
    else:
        log.info("trained %s %s: accuracy %.3f", row["pattern"], row["overrides"], row["accuracy"])
    if progress is not None:
        progress(row)
