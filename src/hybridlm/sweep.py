"""Design-space exploration: train a set of hybrids on one task and report quality against cost.

A sweep file (JSON) names a base config, a training recipe and the axes to vary:

    {
      "base":  {"d_model": 64, "n_heads": 2, "vocab_size": 264, "attention": {"short_conv": 3}},
      "train": {"task": "mqar", "task_settings": {"seq_len": 64, "n_pairs": 8}, "steps": 300},
      "hybrids": {"layers": 4, "ratios": [0, 0.25, 0.5, 1], "placements": ["spread", "bottom", "top"],
                  "ssm": "R", "attn": "A", "ffn": ""},
      "grid": {"mamba.d_state": [8, 16]},
      "search": {"train.lr": {"log_uniform": [1e-4, 1e-2]}},
      "seeds": [0, 1, 2],
      "cost_seq_len": 8192
    }

`hybrids` generates layer patterns for attention ratios r and placements (`spread`: evenly
interleaved, `bottom`: next to the embedding, `top`: next to the head, `random`: seeded); `attn`
may be "S", the shared block, which then feeds the SSM at its place. `grid` is a cartesian product
of dotted config overrides (a `pattern` axis takes literal patterns; `train.<field>` axes vary
the recipe). `search` gives the samplers of `sweep_optuna` a search space: each axis one of
{"choice": [...]}, {"uniform": [lo, hi]}, {"log_uniform": [lo, hi]}, {"int": [lo, hi], "step": k},
{"log_int": [lo, hi]} (the grid runs choices only). `seeds` trains every point once per seed
(replicates). A point is identified by `point_key`, the hash of its fully resolved model, recipe
(seed included) and cost length; axes that change nothing for a point (`sweep_prune`) are set to
their first value, so such points share one run. Rows carry `params`, `tokens`, `loss` and
`attention_ratio`, the columns the scaling fit (`hybridlm analyze --scaling-fit`) reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import random
from pathlib import Path

from .analysis.pareto import pareto_front as pareto_front  # re-exported: cli/sweep.py and users import it here
from .config import ConfigError, ModelConfig
from .pattern import format_pattern
from .recipe import TrainConfig, replace_train_config, train_config
from .sweep_runs import RESULTS_FILE as RESULTS_FILE
from .sweep_runs import Results, Run, train_runs
from .sweep_runs import measure as measure  # re-exported

PLACEMENTS = ("spread", "bottom", "top", "random")
SWEEP_KEYS = {"name", "base", "train", "hybrids", "grid", "search", "seeds", "cost_seq_len", "seed"}
DIMENSIONS = ("choice", "uniform", "log_uniform", "int", "log_int")
SAMPLERS = ("grid", "random", "tpe", "nsga2")


def hybrid_pattern(
    layers: int, ratio: float, placement: str, ssm: str = "M", attn: str = "A", ffn: str = "", seed: int = 0
) -> str:
    """A pattern of `layers` mixers, round(ratio * layers) of them attention, placed as asked."""
    if placement not in PLACEMENTS:
        raise ConfigError(f"placement {placement!r}: choose one of {', '.join(PLACEMENTS)}")
    n_attention = round(ratio * layers)
    if placement == "spread":  # evenly interleaved; one in eight sits at offset 4, as in Jamba
        chosen = {int((i + 0.5) * layers / n_attention) for i in range(n_attention)} if n_attention else set()
    elif placement == "bottom":
        chosen = set(range(n_attention))
    elif placement == "top":
        chosen = set(range(layers - n_attention, layers))
    else:
        chosen = set(random.Random(seed).sample(range(layers), n_attention))
    words = []
    for index in range(layers):
        if index not in chosen:
            words.append(ssm + ffn)
        else:
            # the shared block is the one attention that feeds the next mixer instead of the residual (DESIGN.md)
            words.append(("S" + ssm if attn == "S" else attn) + ffn)
    return format_pattern(" ".join(words))


def search_space(spec: dict) -> dict[str, dict]:
    """Every axis as a dimension {"choice": values} or {kind: [lo, hi], "step": k}: the generated
    patterns and the grid's lists as choices, then the `search` block (checked)."""
    unknown = set(spec) - SWEEP_KEYS
    if unknown:
        raise ConfigError(f"unknown sweep keys: {', '.join(sorted(unknown))} (known: {', '.join(sorted(SWEEP_KEYS))})")
    grid = dict(spec.get("grid", {}))
    patterns = list(grid.pop("pattern", []))
    hybrids = spec.get("hybrids")
    if hybrids:
        options = {key: hybrids[key] for key in ("ssm", "attn", "ffn") if key in hybrids}
        for ratio, placement in itertools.product(hybrids.get("ratios", [0.0]), hybrids.get("placements", ["spread"])):
            pattern = hybrid_pattern(hybrids["layers"], ratio, placement, seed=spec.get("seed", 0), **options)
            if pattern not in patterns:
                patterns.append(pattern)
    space = {"pattern": {"choice": patterns}} if patterns else {}
    for axis, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{axis}: give a non-empty list of values, got {values!r}")
        space[axis] = {"choice": values}
    for axis, dimension in spec.get("search", {}).items():
        if axis in space:
            raise ConfigError(f"search.{axis}: the axis is already in the grid or the hybrids")
        space[axis] = _checked_dimension(axis, dimension)
    if not space:
        raise ConfigError("the sweep varies nothing: give `hybrids`, a `grid` or a `search`")
    return space


def _checked_dimension(axis: str, dimension) -> dict:
    kinds = [kind for kind in DIMENSIONS if isinstance(dimension, dict) and kind in dimension]
    extra = set(dimension) - {*DIMENSIONS, "step"} if isinstance(dimension, dict) else set()
    if len(kinds) != 1 or extra:
        raise ConfigError(f"search.{axis}: give one of {', '.join(DIMENSIONS)} (e.g. {{'choice': [8, 16]}})")
    kind, values = kinds[0], dimension[kinds[0]]
    if kind == "choice":
        if not isinstance(values, list) or not values:
            raise ConfigError(f"search.{axis}.choice: give a non-empty list, got {values!r}")
        return {"choice": values}
    number = int if kind.endswith("int") else (int, float)
    if not (isinstance(values, list) and len(values) == 2 and all(isinstance(v, number) for v in values)):
        raise ConfigError(f"search.{axis}.{kind}: give [low, high] numbers, got {values!r}")
    low, high = values
    if not low < high or (kind.startswith("log") and low <= 0):
        raise ConfigError(f"search.{axis}.{kind}: need {'0 < ' if kind.startswith('log') else ''}low < high")
    return {kind: [low, high], **({"step": dimension["step"]} if "step" in dimension else {})}


def representatives(dimension: dict) -> list:
    """Values that stand for a dimension when checking and pruning: its choices, or its ends."""
    return next(iter(dimension.values()))


def sweep_points(spec: dict) -> list[dict]:
    """The overrides of every grid point: the cartesian product of the (choice) axes."""
    space = search_space(spec)
    ranged = [axis for axis, dimension in space.items() if "choice" not in dimension]
    if ranged:
        raise ConfigError(
            f"search axes {', '.join(ranged)} are ranges: the grid runs choices only "
            "(use --sampler random, tpe or nsga2)"
        )
    keys = list(space)
    return [dict(zip(keys, values)) for values in itertools.product(*(space[key]["choice"] for key in keys))]


def base_of(spec: dict) -> tuple[ModelConfig, TrainConfig]:
    return ModelConfig.from_dict({"pattern": "A", **spec.get("base", {})}), train_config(spec.get("train", {}))


def resolve_point(base: ModelConfig, recipe: TrainConfig, overrides: dict) -> tuple[ModelConfig, TrainConfig]:
    """A point's model and recipe through the same typed path as `hybridlm train`."""
    model_overrides = {k: v for k, v in overrides.items() if not k.startswith("train.")}
    point_recipe = replace_train_config(recipe, {k[6:]: v for k, v in overrides.items() if k.startswith("train.")})
    if point_recipe.init_from is not None:
        raise ConfigError("train.init_from: a sweep trains each point from its own initialisation")
    return base.with_overrides(model_overrides), point_recipe


def resolve_points(spec: dict) -> list[tuple[dict, ModelConfig, TrainConfig]]:
    """Every grid point as (its axis values, its model, its recipe), each checked by the same typed
    path as `hybridlm train`: a typo or a bad value fails here, before anything trains."""
    base, recipe = base_of(spec)
    return [(overrides, *resolve_point(base, recipe, overrides)) for overrides in sweep_points(spec)]


def check_space(spec: dict) -> dict[str, dict]:
    """Resolve every representative value of every axis (on the first choice of the others), so a
    typo in a search axis fails before anything trains. Returns the search space."""
    space = search_space(spec)
    base, recipe = base_of(spec)
    first = {axis: representatives(dimension)[0] for axis, dimension in space.items()}
    for axis, dimension in space.items():
        for value in representatives(dimension):
            resolve_point(base, recipe, {**first, axis: value})
    seeds(spec, recipe)
    return space


def seeds(spec: dict, recipe: TrainConfig) -> list[int]:
    values = spec.get("seeds", [recipe.seed])
    if not isinstance(values, list) or not values or not all(isinstance(s, int) and s >= 0 for s in values):
        raise ConfigError(f"seeds: give a list of integers >= 0, got {values!r}")
    return values


def point_key(config: ModelConfig, recipe: TrainConfig, cost_len: int) -> str:
    """A point's identity: the hash of its fully resolved model, recipe and cost length, so a changed
    recipe (or base) is trained again rather than matched on its axis values."""
    # init_from is never set in a sweep: leaving it out keeps the keys of results written before it existed
    train = {k: v for k, v in dataclasses.asdict(recipe).items() if k != "init_from"}
    text = json.dumps({"model": config.to_dict(), "train": train, "cost_seq_len": cost_len}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan_runs(spec: dict, points: list[dict], space: dict | None = None) -> list[list[Run]]:
    """For each point (axis values), its runs: one per seed, with the axes that change nothing for
    it set to their first value (and named in `pruned`)."""
    from .sweep_prune import inert_axes

    space = space or search_space(spec)
    base, recipe = base_of(spec)
    cost_len = int(spec.get("cost_seq_len", 8192))
    plans = []
    for overrides in points:
        config, point_recipe = resolve_point(base, recipe, overrides)
        pruned = inert_axes(base, point_recipe, overrides, space, cost_len)
        effective = {axis: representatives(space[axis])[0] if axis in pruned else v for axis, v in overrides.items()}
        config, point_recipe = resolve_point(base, recipe, effective)
        runs = []
        for seed in seeds(spec, recipe):
            seeded = dataclasses.replace(point_recipe, seed=seed)
            key = point_key(config, seeded, cost_len)
            runs.append(Run(key, effective, config, seeded, cost_len, tuple(pruned)))
        plans.append(runs)
    return plans


def run_sweep(spec: dict, out=None, progress=None, sampler: str = "grid", trials=None, workers: int = 1) -> list[dict]:
    """Train and measure the sweep's points, one row per run (point x seed), in point order.

    `grid` trains every point (through Optuna's grid sampler when the `sweep` extra is installed,
    else by the loop here); `random`, `tpe` and `nsga2` sample `trials` points (sweep_optuna).
    With `out`, rows go to out/results.json as they come, keyed by `point_key`: a run already there
    is never trained again, so an interrupted sweep continues where it stopped, and a changed
    recipe trains anew. `workers` > 1 trains runs in that many processes."""
    from . import sweep_optuna

    if sampler not in SAMPLERS:
        raise ConfigError(f"--sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    if sampler == "grid" and trials is not None:
        raise ConfigError("--trials is for the random, tpe and nsga2 samplers: the grid trains every point")
    if sampler != "grid" and (trials is None or trials < 1):
        raise ConfigError(f"--sampler {sampler} needs --trials N (N >= 1)")
    if sampler != "grid" or sweep_optuna.available():
        return sweep_optuna.run_study(spec, out, sampler, trials, workers, progress)
    return run_grid(spec, out, progress, workers)


def run_grid(spec: dict, out=None, progress=None, workers: int = 1) -> list[dict]:
    """The grid without Optuna: every point's runs, the same bookkeeping (results.json by key)."""
    points = sweep_points(spec)
    check_space(spec)
    results = Results(out)
    plans = plan_runs(spec, points)
    runs = [run for plan in plans for run in plan]
    rows = train_runs(runs, results, workers, progress)
    return unique_rows(runs, rows)


def unique_rows(runs: list[Run], rows: dict[str, dict]) -> list[dict]:
    """The rows of `runs` in order, each key once (pruned points share a run)."""
    return [rows[key] for key in dict.fromkeys(run.key for run in runs)]


def load_spec(path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such sweep file")
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: a sweep file is a JSON object")
    return spec
