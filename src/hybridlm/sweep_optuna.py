"""Sweeps on Optuna (the `sweep` extra): grid, random, TPE and NSGA-II samplers over the sweep's
search space, the study stored in SQLite beside results.json. The grid's points are enqueued as
fixed trials (Optuna's GridSampler stops the study from inside `tell`, which the ask-and-tell
loop here cannot take), so a grid study holds every point once, in grid order.

A trial samples axis values; its runs (one per seed) are trained through the shared bookkeeping
(`sweep_runs`), so a run whose key is in results.json is never trained again. The study's name is
the hash of the resolved base, recipe, space, seeds, cost length and sampler: the same sweep in
the same folder resumes its study (a trial an interruption left running is asked again with the
same values), a changed recipe starts a new study whose keys differ, so its points are trained.
Single-objective samplers maximise mean accuracy over the seeds; NSGA-II (Deb et al. 2002)
maximises accuracy and minimises training FLOPs per token and cache bytes at `cost_seq_len`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import statistics
from pathlib import Path

from .config import ConfigError
from .ownership import check_replaceable, own

log = logging.getLogger(__name__)
STUDY_FILE = "study.db"
OBJECTIVES = {"accuracy": "maximize", "train_flops_per_token": "minimize", "cache_bytes": "minimize"}


def available() -> bool:
    try:
        import optuna  # noqa: F401
    except ImportError:
        return False
    return True


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("the random, tpe and nsga2 samplers need Optuna: pip install 'hybridlm[sweep]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def distributions(space: dict) -> dict:
    """The search space as Optuna distributions."""
    optuna = _optuna()
    made = {}
    for axis, dimension in space.items():
        kind, values = next(iter(dimension.items()))
        if kind == "choice":
            made[axis] = optuna.distributions.CategoricalDistribution(values)
        elif kind in ("uniform", "log_uniform"):
            made[axis] = optuna.distributions.FloatDistribution(*values, log=kind == "log_uniform")
        else:
            step = dimension.get("step", 1)
            made[axis] = optuna.distributions.IntDistribution(*values, log=kind == "log_int", step=step)
    return made


def make_sampler(name: str, space: dict, seed: int):
    optuna = _optuna()
    if name in ("grid", "random"):  # the grid's points are enqueued: a sampler never proposes them
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=4)
    return optuna.samplers.NSGAIISampler(seed=seed)


def study_name(spec: dict, sampler: str) -> str:
    """The hash of everything that decides the study's trials and their runs."""
    from .sweep import base_of, search_space

    base, recipe = base_of(spec)
    identity = {
        "base": base.to_dict(),
        "train": dataclasses.asdict(recipe),
        "space": search_space(spec),
        "seeds": spec.get("seeds"),
        "cost_seq_len": spec.get("cost_seq_len", 8192),
        "seed": spec.get("seed", 0),
        "sampler": sampler,
    }
    return "sweep-" + hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def open_study(spec: dict, out, sampler: str, space: dict):
    optuna = _optuna()
    storage = None
    if out is not None:
        check_replaceable(out, "--out", writing="sweep")
        Path(out).mkdir(parents=True, exist_ok=True)
        own(out, STUDY_FILE, kind="sweep")
        storage = f"sqlite:///{Path(out).absolute() / STUDY_FILE}"
    directions = list(OBJECTIVES.values()) if sampler == "nsga2" else ["maximize"]
    study = optuna.create_study(
        study_name=study_name(spec, sampler), storage=storage, directions=directions, load_if_exists=True
    )
    # seeded by the sweep's seed and the trials so far: a resumed study does not replay its first proposals
    study.sampler = make_sampler(sampler, space, spec.get("seed", 0) + 1000 * len(study.trials))
    return study


def run_study(spec: dict, out, sampler: str, trials: int | None, workers: int = 1, progress=None) -> list[dict]:
    """Run (or resume) the study until it holds `trials` finished trials (the grid: all its points);
    the rows of their runs, in trial order. A trial whose runs diverged is finished as FAIL (the
    samplers learn nothing from it) with the reason in its `diverged` attribute, and is not asked again."""
    from .sweep import check_space, plan_runs, sweep_points
    from .sweep_runs import Results, train_runs

    optuna = _optuna()
    State = optuna.trial.TrialState
    space = check_space(spec)
    if sampler == "grid":
        trials = len(sweep_points(spec))
    results = Results(out)
    study = open_study(spec, out, sampler, space)
    made = distributions(space)
    for stale in study.get_trials(deepcopy=False, states=(State.RUNNING,)):
        log.warning("trial %d was interrupted: it is asked again", stale.number)
        study.tell(stale.number, state=State.FAIL)
        if sampler != "grid":
            study.enqueue_trial(stale.params)
    if sampler == "grid":
        waiting = study.get_trials(deepcopy=False, states=(State.WAITING,))
        asked = [trial.params for trial in _finished(study) + waiting]
        for point in sweep_points(spec):
            if point not in asked:
                study.enqueue_trial(point)
    while len(_finished(study)) < trials:
        batch = [study.ask(made) for _ in range(min(max(workers, 1), trials - len(_finished(study))))]
        plans = plan_runs(spec, [_ordered(trial.params, space) for trial in batch], space)
        for trial, plan in zip(batch, plans):
            trial.set_user_attr("keys", [run.key for run in plan])
        rows = train_runs([run for plan in plans for run in plan], results, workers, progress)
        for trial, plan in zip(batch, plans):
            plan_rows = [rows[run.key] for run in plan]
            diverged = [row["diverged"] for row in plan_rows if row.get("diverged")]
            if diverged:
                trial.set_user_attr("diverged", diverged[0])
                study.tell(trial, state=State.FAIL)
            else:
                study.tell(trial, objective_values(plan_rows, sampler))
    runs_rows = []
    for trial in _finished(study):
        runs_rows.extend(results.rows[key] for key in trial.user_attrs["keys"])
    return list({row["key"]: row for row in runs_rows}.values())


def objective_values(rows: list[dict], sampler: str) -> list[float]:
    """Mean accuracy over the seeds; with NSGA-II also the point's costs."""
    accuracy = statistics.fmean(row["accuracy"] for row in rows)
    if sampler != "nsga2":
        return [accuracy]
    return [accuracy, float(rows[0]["train_flops_per_token"]), float(rows[0]["cache_bytes"])]


def _finished(study) -> list:
    """Complete trials and those failed because their runs diverged (not the interrupted ones), in order."""
    State = _optuna().trial.TrialState
    trials = study.get_trials(deepcopy=False, states=(State.COMPLETE, State.FAIL))
    return [trial for trial in trials if trial.state == State.COMPLETE or "diverged" in trial.user_attrs]


def _ordered(params: dict, space: dict) -> dict:
    return {axis: params[axis] for axis in space}


def best_keys(out, spec: dict, sampler: str) -> list[list[str]]:
    """The run keys of the study's best trials (NSGA-II: its non-dominated set)."""
    optuna = _optuna()
    storage = f"sqlite:///{Path(out).absolute() / STUDY_FILE}"
    study = optuna.load_study(study_name=study_name(spec, sampler), storage=storage)
    return [trial.user_attrs["keys"] for trial in study.best_trials]
