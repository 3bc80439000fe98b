"""A training recipe: the typed `TrainConfig`, and a run's full description (model + recipe) from a
file, flags and dotted overrides, through one checked path.

A recipe file (YAML or JSON) holds any of:

    model: "(RF AF)*1"        # a preset, a layer pattern, a checkpoint directory, or a mapping of
    size: tiny                #   ModelConfig fields; `size` picks a preset's dimensions
    set: {mamba.d_state: 8}   # dotted model overrides
    train: {task: mqar, task_settings: {seq_len: 64, n_pairs: 8}, steps: 300, lr: 0.003}

`hybridlm train --print-config` writes the resolved form (`model` as every field, `train` as every
setting), which loads back to the identical run. Command-line flags override the file.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from . import settings
from .config import ConfigError, ModelConfig, nearest, parse_override
from .pattern import PatternError, format_pattern
from .presets import preset_config, presets
from .settings import setting

RECIPE_KEYS = ("model", "size", "set", "train")
TEXT_TASK = "text"
DEFAULT_WARMUP = 20


@dataclass
class TrainConfig:
    """How a model is trained. Each field's help and allowed range make its `hybridlm train` flag."""

    task: str = setting("mqar", "a synthetic task (mqar, passkey, copy, induction) or text")
    task_settings: dict = setting(dict, "task settings, e.g. seq_len=64 n_pairs=8", flag="--task-set")
    text_path: str | None = setting(None, "text file or directory of .txt/.md files (task text)", flag="--data")
    seq_len: int = setting(256, "sequence length for text", minimum=1)
    steps: int = setting(200, "total optimizer steps", minimum=1)
    batch_size: int = setting(32, "sequences per optimizer step, over all ranks and micro-steps", minimum=1)
    grad_accum: int = setting(1, "micro-steps per optimizer step (gradient accumulation)", minimum=1)
    lr: float = setting(
        3e-3, "peak learning rate (at most 1e30: AdamW's float32 update overflows beyond)", above=0.0, maximum=1e30
    )
    min_lr_ratio: float = setting(0.1, "final learning rate as a fraction of the peak", minimum=0.0, maximum=1.0)
    warmup_steps: int | None = setting(None, "linear warm-up steps, at most steps (default: min(20, steps))", minimum=0)
    weight_decay: float = setting(0.1, "AdamW weight decay on matrices", minimum=0.0)
    grad_clip: float = setting(1.0, "clip the global gradient norm to this", above=0.0)
    seed: int = setting(0, "seed of the initialisation and the batches", minimum=0)
    init_from: str | None = setting(
        None,
        "start from the weights of this checkpoint or run directory: a fine-tune, with a new optimizer and "
        "schedule and the checkpoint's tokenizer (default: the model argument when it is a directory)",
        flag="--init-from",
    )
    log_every: int = setting(10, "steps between metrics lines", minimum=1)
    eval_every: int = setting(0, "steps between held-out evaluations (0: at the end only)", minimum=0)
    eval_batches: int = setting(8, "held-out batches per evaluation", minimum=1)
    save_every: int = setting(0, "steps between checkpoints (0: at the end only)", minimum=0)
    keep: int = setting(1, "checkpoints kept: the latest in the run directory, older ones in checkpoints/", minimum=1)
    parallel: str = setting("ddp", "strategy under torchrun", choices=("ddp", "fsdp"))
    gradient_checkpointing: bool = setting(False, "recompute sub-layers in the backward pass")
    precision: str = setting(
        "auto", "autocast: auto (bf16 on CUDA, fp32 on CPU), fp32, bf16, fp16", choices=("auto", "fp32", "bf16", "fp16")
    )
    compile: bool = setting(False, "torch.compile the model (graph breaks are logged)")
    peak_tflops: float | None = setting(None, "the device's peak TFLOP/s, to report MFU", above=0.0)
    tensorboard: bool = setting(False, "also log to TensorBoard (run_dir/tensorboard; the tensorboard extra)")

    @property
    def warmup(self) -> int:
        """The warm-up length: as set, else min(20, steps) (so a short run still decays)."""
        return min(DEFAULT_WARMUP, self.steps) if self.warmup_steps is None else self.warmup_steps

    def __post_init__(self) -> None:
        settings.check(self)
        if self.warmup_steps is not None and self.warmup_steps > self.steps:
            raise ConfigError(f"warmup_steps={self.warmup_steps} exceeds steps={self.steps}")


@dataclass
class EvalConfig:
    """How a saved model is evaluated (`hybridlm eval`); each field's help and range make its flag."""

    task: str | None = setting(None, "a synthetic task or text (default: the one the run trained on)")
    data: str | None = setting(
        None, "task text: a text file, folder or token shards, scored whole (default: the run's validation split)"
    )
    seq_len: int | None = setting(None, "text window (default: the training one)", minimum=1)
    stride: int | None = setting(None, "text: tokens between window starts (default: seq-len)", minimum=1)
    batch_size: int = setting(16, "sequences per forward pass", minimum=1)
    batches: int = setting(16, "held-out batches of a synthetic task", minimum=1)
    seed: int = setting(0, "seed of the held-out batches", minimum=0)
    grid: bool = setting(False, "passkey / phonebook: exact match at every depth x length")
    depths: str = setting("0,0.25,0.5,0.75,1", "grid depths in [0, 1], comma-separated")
    lengths: str | None = setting(
        None, "grid lengths: passkey seq_len, phonebook n_entries (default: 1, 2, 4, 8 x the trained one)"
    )


def task_names() -> list[str]:
    from .data.synthetic import TASKS

    return [*TASKS, TEXT_TASK]


def train_config(data: dict, prefix: str = "train.") -> TrainConfig:
    """A checked `TrainConfig` from typed values (a file's `train` block, a sweep's recipe and axes)."""
    config = settings.build(TrainConfig, data, prefix)
    if config.task not in task_names():
        raise ConfigError(f"{prefix}task={config.task!r}: choose one of {', '.join(task_names())}")
    return config


def replace_train_config(config: TrainConfig, changes: dict, prefix: str = "train.") -> TrainConfig:
    return train_config({**dataclasses.asdict(config), **changes}, prefix)


def resolve_model(target, size: str = "small", overrides: dict | None = None) -> ModelConfig:
    """A mapping of fields, then a directory, then a preset name, then a layer pattern with the preset
    dimensions of `size`; dotted `overrides` on top."""
    from .checkpoint import load_config

    overrides = dict(overrides or {})
    if isinstance(target, dict):
        return ModelConfig.from_dict(target).with_overrides(overrides)
    if not isinstance(target, str):
        raise ConfigError(f"model must be a preset, a pattern, a directory or a mapping, got {target!r}")
    if Path(target).is_dir():
        return load_config(target).with_overrides(overrides)
    if target in presets():
        return preset_config(target, size, overrides)
    try:
        format_pattern(target)
    except PatternError as error:
        hint = nearest(target, presets()) or f"; presets: {', '.join(presets())}"
        raise PatternError(
            f"{target!r} is not a checkpoint directory, a preset or a valid pattern{hint} (as a pattern: {error})"
        ) from None
    return preset_config("transformer", size, {"pattern": target, **overrides})


def parse_overrides(items: list[str] | None) -> dict:
    """Command-line `key=value` strings as a mapping."""
    return dict(parse_override(item) for item in items or [])


def read_recipe(path) -> dict:
    """A recipe file's mapping (YAML, or JSON by its .json suffix), its keys checked."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such recipe file")
    import yaml

    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: cannot parse ({' '.join(str(error).split())})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe file is a mapping of {', '.join(RECIPE_KEYS)}")
    for key in data:
        if key not in RECIPE_KEYS:
            raise ConfigError(f"{path}: unknown key {key!r}{nearest(str(key), RECIPE_KEYS)}")
    return data


def resolved_recipe(model_config: ModelConfig, config: TrainConfig) -> dict:
    """The full recipe as a mapping that `read_recipe` + `train` turn back into the same run."""
    model = model_config.to_dict()
    model.pop("layer_types")
    return {"model": model, "train": dataclasses.asdict(config)}


def dump_recipe(recipe: dict) -> str:
    import yaml

    return yaml.safe_dump(recipe, sort_keys=False, default_flow_style=False)
