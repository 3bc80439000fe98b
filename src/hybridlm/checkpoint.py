"""Checkpoints as Hugging Face-style directories: `config.json` + `model.safetensors` (+ tokenizer).

Writes are atomic: files are written and fsync'd in a sibling staging directory which then takes
the target's place in one step (an atomic exchange on Linux), so a crash leaves either the old
checkpoint or the new one. Only a directory hybridlm wrote (ownership.py) is ever replaced, and
only when asked (`overwrite`). Non-finite weights are never written and never loaded. Loads never
unpickle, and a corrupt, truncated or mismatched checkpoint is refused with a reason.
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
from .ownership import MARKER, OwnershipError, check_replaceable, marker, remove_stale_staging

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def save(model: HybridLM, directory, tokenizer=None, extra_files: dict | None = None, overwrite: bool = False) -> Path:
    """Write `model` (and `tokenizer`) to `directory` atomically. Returns the path.

    An existing checkpoint there is replaced only with `overwrite=True`, and only when hybridlm
    wrote all of it. `extra_files`: {name: str | bytes} written beside the weights.
    """
    return save_state(model.config, model.state_dict(), directory, tokenizer, extra_files, overwrite=overwrite)


def save_state(
    config: ModelConfig,
    state_dict: dict,
    directory,
    tokenizer=None,
    extra_files=None,
    *,
    overwrite: bool = False,
    kind: str = "checkpoint",
    carry: dict[str, Path] | None = None,
) -> Path:
    """`save` from a config and a full state dict (what FSDP gathers); the tied head is dropped.

    `carry`: {name in the new directory: existing file or folder} it keeps (a run's metrics, older
    checkpoints), hard-linked, not copied. Refuses non-finite tensors, naming the first."""
    tensors = {
        name: tensor.detach().contiguous().cpu()
        for name, tensor in state_dict.items()
        if not (config.tie_embeddings and name == "lm_head.weight")
    }
    check_finite(tensors, f"refusing to save {directory}")
    with atomic_directory(directory, kind, overwrite=overwrite) as staging:
        config.to_json(staging / CONFIG_FILE)
        save_file(tensors, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save(staging)
        for name, content in (extra_files or {}).items():
            (staging / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        for entry in staging.iterdir():
            follow_umask(entry)
        for name, source in (carry or {}).items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            link_tree(Path(source), staging / name)
        (staging / MARKER).write_text(marker(kind, [entry.name for entry in staging.iterdir()]))
    return Path(directory)


def check_finite(tensors: dict, context: str) -> None:
    """Raise CheckpointError naming the first floating tensor holding a NaN or an infinity."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{context}: tensor {name} holds non-finite values (NaN or inf)")


def follow_umask(path: Path) -> None:
    """Give a written file the mode the umask implies (some writers create 0600 files)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def link_tree(source: Path, target: Path) -> None:
    """Hard-link a file, or a directory's files, from `source` to `target` (a copy where links fail)."""
    if source.is_dir():
        shutil.copytree(source, target, copy_function=_link_or_copy)
    elif source.exists():
        _link_or_copy(source, target)


def _link_or_copy(source, target) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def saved_names(model: HybridLM) -> set[str]:
    """Names of the tensors a checkpoint holds: the state dict less the tied LM head."""
    names = set(model.state_dict())
    if model.config.tie_embeddings:
        names.discard("lm_head.weight")
    return names


def load(directory, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> HybridLM:
    """Load a model saved by `save` (in float32, or `dtype`: the file may hold bf16 weights); raises
    `CheckpointError` with the reason when it cannot."""
    config = load_config(directory)
    model = HybridLM(config)
    load_weights(model, Path(directory) / WEIGHTS_FILE)
    return model.to(device=device, dtype=dtype)


def read_config_json(directory) -> dict:
    """The config.json object of a checkpoint directory (ours or Hugging Face's)."""
    directory = Path(directory)
    if not directory.is_dir():
        found = "is a file, not a checkpoint directory" if directory.exists() else "no such checkpoint directory"
        raise CheckpointError(f"{directory}: {found}")
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
    model.load_state_dict(read_weights(model, path), strict=False)


def read_weights(model: HybridLM, path, expected_by: str = "config.json") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, checked against `model`'s names and shapes (a model on the
    meta device will do; `expected_by` names where its config came from) and refused when any is not finite."""
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
        raise CheckpointError(f"{path}: weights do not match {expected_by} ({detail})")
    state = model.state_dict()
    for name, tensor in tensors.items():
        if tensor.shape != state[name].shape:
            found, wanted = tuple(tensor.shape), tuple(state[name].shape)
            raise CheckpointError(f"{path}: shape mismatch for {name}: file {found}, {expected_by} {wanted}")
    check_finite(tensors, f"{path}: refusing to load")
    return tensors


def _few(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


# ---- atomic directory replacement ------------------------------------------------------------------
@contextmanager
def atomic_directory(directory, kind: str, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging directory; when the block succeeds it takes `directory`'s place at once.

    An existing, non-empty `directory` is replaced only with `overwrite`, only when hybridlm wrote
    all of it, and only by what may replace its kind (a checkpoint never replaces a training run);
    staging folders an interrupted save left beside it are removed first.
    """
    directory = Path(directory)
    check_replaceable(directory, writing=kind)
    if directory.is_dir() and any(directory.iterdir()) and not overwrite:
        raise OwnershipError(f"{directory} already holds a checkpoint; pass --overwrite (overwrite=True) to replace it")
    directory.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(directory)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.staging.", dir=directory.parent))
    try:
        (staging / MARKER).write_text(marker("staging", []))  # so a kill leaves a folder known to be ours
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes 0700; a checkpoint is as readable as other files
        yield staging
        for file in staging.rglob("*"):
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
