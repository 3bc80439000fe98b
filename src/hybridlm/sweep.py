"""Design-space exploration: train a grid of hybrids on one task and report quality against cost.

A sweep file (JSON) names a base config, a training recipe and the axes to vary:

    {
      "base":  {"d_model": 64, "n_heads": 2, "vocab_size": 264, "attention": {"short_conv": 3}},
      "train": {"task": "mqar", "task_settings": {"seq_len": 64, "n_pairs": 8}, "steps": 300},
      "hybrids": {"layers": 4, "ratios": [0, 0.25, 0.5, 1], "placements": ["spread", "bottom", "top"],
                  "ssm": "R", "attn": "A", "ffn": ""},
      "grid": {"mamba.d_state": [8, 16]},
      "cost_seq_len": 8192
    }

`hybrids` generates layer patterns for attention ratios r and placements (`spread`: evenly
interleaved, `bottom`: next to the embedding, `top`: next to the head, `random`: seeded); `attn`
may be "S", the shared block, which then feeds the SSM at its place. `grid` is a cartesian product
of dotted config overrides (a `pattern` axis takes literal patterns; `train.<field>` axes vary
the recipe, e.g. `train.steps` for the data term of a scaling fit). Every point is trained and
measured: held-out loss and accuracy, parameters, FLOPs per token, cache
bytes at `cost_seq_len`. The Pareto frontier keeps the points no other point beats on both
quality and a cost. Rows carry `params`, `tokens`, `loss` and `attention_ratio`, the columns the
scaling fit (`hybridlm analyze --scaling-fit`) reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import random
import time
from pathlib import Path

from .analysis.cache_size import cache_bytes
from .analysis.flops import model_flops
from .analysis.params import active_parameters, build_meta
from .analysis.pareto import pareto_front as pareto_front  # re-exported: cli/sweep.py and users import it here
from .config import ConfigError, ModelConfig
from .ownership import check_replaceable, own
from .pattern import attention_ratio, format_pattern
from .recipe import TrainConfig, replace_train_config, train_config
from .train import train

log = logging.getLogger(__name__)
PLACEMENTS = ("spread", "bottom", "top", "random")
RESULTS_FILE = "results.json"
SWEEP_KEYS = {"name", "base", "train", "hybrids", "grid", "cost_seq_len", "seed"}


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
            words.append(("S" + ssm if attn == "S" else attn) + ffn)
    return format_pattern(" ".join(words))


def sweep_points(spec: dict) -> list[dict]:
    """The overrides of every point: generated hybrid patterns x the grid's cartesian product."""
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
    axes = ([("pattern", patterns)] if patterns else []) + list(grid.items())
    if not axes:
        raise ConfigError("the sweep varies nothing: give `hybrids` or a `grid`")
    keys = [key for key, _ in axes]
    return [dict(zip(keys, values)) for values in itertools.product(*(values for _, values in axes))]


def resolve_points(spec: dict) -> list[tuple[dict, ModelConfig, TrainConfig]]:
    """Every point as (its axis values, its model, its recipe), each checked by the same typed path
    as `hybridlm train`: a typo or a bad value fails here, before anything trains."""
    base = ModelConfig.from_dict({"pattern": "A", **spec.get("base", {})})
    recipe = train_config(spec.get("train", {}))
    points = []
    for overrides in sweep_points(spec):
        model_overrides = {k: v for k, v in overrides.items() if not k.startswith("train.")}
        point_recipe = replace_train_config(recipe, {k[6:]: v for k, v in overrides.items() if k.startswith("train.")})
        points.append((overrides, base.with_overrides(model_overrides), point_recipe))
    return points


def point_key(config: ModelConfig, recipe: TrainConfig, cost_len: int) -> str:
    """A point's identity: the hash of its fully resolved model, recipe and cost length, so a changed
    recipe (or base) is trained again rather than matched on its axis values."""
    text = json.dumps(
        {"model": config.to_dict(), "train": dataclasses.asdict(recipe), "cost_seq_len": cost_len}, sort_keys=True
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_sweep(spec: dict, out=None, progress=None) -> list[dict]:
    """Train and measure every point; with `out`, results are appended to out/results.json as they
    come and points already there (same resolved model and recipe) are skipped, so an interrupted
    sweep continues where it stopped. Rows of other recipes in the file are kept."""
    points = resolve_points(spec)
    cost_len = int(spec.get("cost_seq_len", 8192))
    results_path = Path(out) / RESULTS_FILE if out else None
    if out is not None:
        check_replaceable(out, "--out")
    rows = json.loads(results_path.read_text()) if results_path and results_path.exists() else []
    done = {row.get("key") for row in rows}
    current = []
    for overrides, config, point_recipe in points:
        key = point_key(config, point_recipe, cost_len)
        if key in done:
            current.append(next(row for row in rows if row.get("key") == key))
            continue
        start = time.perf_counter()
        result = train(config, point_recipe)
        row = measure(config, point_recipe, cost_len, result.final_eval, overrides, time.perf_counter() - start)
        rows.append({"key": key, **row})
        current.append(rows[-1])
        if results_path is not None:
            write_results(Path(out), rows)
        if progress is not None:
            progress(rows[-1])
    return current


def write_results(out: Path, rows: list[dict]) -> None:
    """results.json, atomically, in a directory marked as a sweep's."""
    out.mkdir(parents=True, exist_ok=True)
    temporary = out / f".{RESULTS_FILE}.tmp"
    temporary.write_text(json.dumps(rows, indent=2) + "\n")
    temporary.replace(out / RESULTS_FILE)
    own(out, RESULTS_FILE, kind="sweep")


def measure(config: ModelConfig, recipe: TrainConfig, cost_len: int, final: dict, overrides: dict, seconds: float):
    """One result row: quality, size, compute and memory of a trained point."""
    model = build_meta(config)
    seq_len = recipe.task_settings.get("seq_len", recipe.seq_len)
    return {
        "overrides": overrides,
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
