"""Checkpoints as Hugging Face-style directories: `config.json` + `model.safetensors` (+ tokenizer).

Writes are atomic (a temporary sibling directory renamed into place), loads never unpickle, and a
corrupt, truncated or mismatched checkpoint is refused with a one-line reason.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ConfigError, ModelConfig
from .model import HybridLM

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: missing, corrupt, or not matching its config."""


def save(model: HybridLM, directory, tokenizer=None, extra_files: dict | None = None) -> Path:
    """Write `model` (and `tokenizer`) to `directory`, replacing it atomically. Returns the path.

    `extra_files`: {name: str | bytes} written beside the weights (e.g. a training state).
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        model.config.to_json(staging / CONFIG_FILE)
        save_file(weights_to_save(model), str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save(staging)
        for name, content in (extra_files or {}).items():
            (staging / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        _replace_directory(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def weights_to_save(model: HybridLM) -> dict:
    """The state dict without tied duplicates, contiguous, on CPU."""
    state = model.state_dict()
    return {name: state[name].detach().contiguous().cpu() for name in saved_names(model)}


def saved_names(model: HybridLM) -> set[str]:
    """Names of the tensors a checkpoint holds: the state dict less the tied LM head."""
    names = set(model.state_dict())
    if model.config.tie_embeddings:
        names.discard("lm_head.weight")
    return names


def load(directory, device: str | torch.device = "cpu") -> HybridLM:
    """Load a model saved by `save`; raises `CheckpointError` with the reason when it cannot."""
    config = load_config(directory)
    model = HybridLM(config)
    load_weights(model, Path(directory) / WEIGHTS_FILE)
    return model.to(device)


def load_config(directory) -> ModelConfig:
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    path = directory / CONFIG_FILE
    if not path.exists():
        raise CheckpointError(f"{directory}: missing {CONFIG_FILE}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from None
    try:
        return ModelConfig.from_dict(data)
    except (ConfigError, ValueError) as error:
        raise CheckpointError(f"{path}: {error}") from None


def load_weights(model: HybridLM, path) -> None:
    """Copy the tensors of a safetensors file into `model`, checking names and shapes first."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path.parent}: missing {path.name}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({error})") from None
    expected = saved_names(model)
    missing = sorted(expected - tensors.keys())
    unexpected = sorted(tensors.keys() - expected)
    if missing or unexpected:
        detail = f"missing {_few(missing)}" if missing else f"unexpected {_few(unexpected)}"
        raise CheckpointError(f"{path}: weights do not match config.json ({detail})")
    state = model.state_dict()
    for name, tensor in tensors.items():
        if tensor.shape != state[name].shape:
            raise CheckpointError(
                f"{path}: shape mismatch for {name}: file {tuple(tensor.shape)}, config {tuple(state[name].shape)}"
            )
    model.load_state_dict(tensors, strict=False)


def _few(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _replace_directory(staging: Path, directory: Path) -> None:
    """Swap `staging` into `directory`: the old content stays whole until the new one is in place."""
    if not directory.exists():
        os.replace(staging, directory)
        return
    backup = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
    backup.rmdir()
    os.replace(directory, backup)
    try:
        os.replace(staging, directory)
    except OSError:
        os.replace(backup, directory)
        raise
    shutil.rmtree(backup, ignore_errors=True)
