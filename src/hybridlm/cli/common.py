"""Pieces the verbs share: model flags, resolving a target to a config, progress bars, plain-text tables."""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager

from ..config import ConfigError, ModelConfig
from ..presets import SIZES
from ..tables import format_table as format_table  # re-exported: cli modules import it from here


def add_model_flags(parser: argparse.ArgumentParser, size_default: str | None = "small") -> None:
    parser.add_argument("--size", choices=SIZES, default=size_default, help="preset size (default: small)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, repeatable, e.g. --set mamba.d_state=8",
    )


def resolve_config(target: str, size: str = "small", overrides: list[str] | None = None) -> ModelConfig:
    """A directory wins, then a preset name, then a layer pattern with the preset dimensions of `size`."""
    from ..recipe import parse_overrides, resolve_model

    return resolve_model(target, size, parse_overrides(overrides))


class _Bar:
    """A tqdm bar as a callback `(done, total)`; `write` prints a line above it."""

    def __init__(self, bar):
        self.bar = bar

    @property
    def done(self) -> int:
        return self.bar.n

    def __call__(self, done: int, total: int) -> None:
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def write(self, line: str) -> None:
        self.bar.write(line)


@contextmanager
def progress_bar(total: int, label: str, unit: str = "step"):
    """A callback `(done, total)` drawing a bar with ETA on a terminal (tqdm); on a pipe or a file,
    None (the log lines are the record). Log lines go above the bar."""
    if not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    with tqdm(total=total, desc=label, unit=unit, dynamic_ncols=True) as bar, logging_redirect_tqdm():
        yield _Bar(bar)


def task_settings(items: list[str] | None) -> dict:
    """`--task-set KEY=VALUE` flags as a mapping, numbers read as int or float."""
    from ..config import parse_override

    settings = {}
    for item in items or []:
        key, value = parse_override(item)
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                pass
        settings[key] = value
    return settings


def saved_task(model, directory, task: str, task_set: list[str] | None):
    """(task object, its settings) for evaluating a saved model: the run's own settings when `task`
    is the one it trained on, then `--task-set` on top; checked to fit the model's vocabulary."""
    from ..data.synthetic import make_task

    trained = training_settings(directory)
    settings = trained.get("task_settings", {}) if task == trained.get("task") else {}
    settings.update(task_settings(task_set))
    data = make_task(task, **settings)
    if data.vocab_size > model.config.vocab_size:
        raise ConfigError(
            f"task {task} uses {data.vocab_size} token ids, the model has vocab_size {model.config.vocab_size}"
        )
    return data, settings


def training_settings(directory) -> dict:
    """The `train_config` a run directory saved (empty for a plain checkpoint)."""
    import json
    from pathlib import Path

    from ..run_dir import STATE_FILE

    state = Path(directory) / STATE_FILE
    return json.loads(state.read_text()).get("train_config", {}) if state.exists() else {}


def plot_path(text: str) -> str:
    """An argparse type for `--plot FILE`: refuses, before any work, a format matplotlib cannot write."""
    suffix = text.rsplit(".", 1)[-1].lower() if "." in text.rsplit("/", 1)[-1] else ""
    formats = ("png", "pdf", "svg", "jpg", "jpeg", "eps", "ps", "tif", "tiff", "webp", "pgf", "raw", "rgba", "svgz")
    if suffix not in formats:
        raise argparse.ArgumentTypeError(
            f"{text!r}: the plot's extension picks its format; use one of .{', .'.join(formats)}"
        )
    return text


def human(count: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.2f}{unit}"
    return str(count)


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
