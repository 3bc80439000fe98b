"""Checkpoints as Hugging Face-style directories: `config.json` + `model.safetensors` (+ tokenizer).

Writes are atomic: files are written and fsync'd in a sibling staging directory which then takes
the target's place in one step (an atomic exchange on Linux), so a crash leaves either the old
checkpoint or the new one. A directory holding anything but a checkpoint is never replaced.
Loads never unpickle, and a corrupt, truncated or mismatched checkpoint is refused with a reason.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ModelConfig
from .errors import CheckpointError
from .model import HybridLM

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def save(model: HybridLM, directory, tokenizer=None, extra_files: dict | None = None) -> Path:
    """Write `model` (and `tokenizer`) to `directory`, replacing it atomically. Returns the path.

    `extra_files`: {name: str | bytes} written beside the weights (e.g. a training state).
    """
    return save_state(model.config, model.state_dict(), directory, tokenizer, extra_files)


def save_state(config: ModelConfig, state_dict: dict, directory, tokenizer=None, extra_files=None) -> Path:
    """`save` from a config and a full state dict (what FSDP gathers); the tied head is dropped."""
    tensors = {
        name: tensor.detach().contiguous().cpu()
        for name, tensor in state_dict.items()
        if not (config.tie_embeddings and name == "lm_head.weight")
    }
    with atomic_directory(directory) as staging:
        config.to_json(staging / CONFIG_FILE)
        save_file(tensors, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save(staging)
        for name, content in (extra_files or {}).items():
            (staging / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return Path(directory)


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


def read_config_json(directory) -> dict:
    """The config.json object of a checkpoint directory (ours or Hugging Face's)."""
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
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def load_config(directory) -> ModelConfig:
    data = read_config_json(directory)
    try:
        return ModelConfig.from_dict(data)
    except ValueError as error:  # ConfigError and PatternError
        raise CheckpointError(f"{Path(directory) / CONFIG_FILE}: {error}") from None


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


# ---- atomic directory replacement ------------------------------------------------------------------
@contextmanager
def atomic_directory(directory) -> Iterator[Path]:
    """Yield an empty staging directory; when the block succeeds it takes `directory`'s place at once.

    Refuses to replace a directory that holds files but no config.json (not a checkpoint).
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"{directory} exists and is not a directory")
    if directory.is_dir() and any(directory.iterdir()) and not (directory / CONFIG_FILE).exists():
        raise CheckpointError(f"{directory} holds files but no {CONFIG_FILE}: refusing to replace it")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.staging.", dir=directory.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes 0700; a checkpoint is as readable as other files
        yield staging
        for file in staging.iterdir():
            _fsync(file)
        _fsync(staging)
        _swap(staging, directory)
        _fsync(directory.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _swap(staging: Path, directory: Path) -> None:
    """Put `staging` at `directory`; the old content (if any) ends up at `staging`, then is removed."""
    if not directory.exists():
        os.rename(staging, directory)
    elif not _exchange(staging, directory):  # no renameat2: a short window without the directory
        backup = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
        backup.rmdir()
        os.rename(directory, backup)
        os.rename(staging, directory)
        os.rename(backup, staging)


def _exchange(first: Path, second: Path) -> bool:
    """Atomically swap two paths with Linux renameat2(RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange)
    return result == 0


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
