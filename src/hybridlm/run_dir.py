"""A training run's directory: what may be written there, and its layout.

    RUN/hybridlm.json        the marker: written by hybridlm, a "run", the entries it owns
    RUN/recipe.yaml          the resolved model + recipe (`hybridlm train --config RUN/recipe.yaml`)
    RUN/metrics.jsonl        one JSON line per logged step, flushed as it happens
    RUN/config.json, model.safetensors, tokenizer.json, trainer_state.json, optimizer.*
                             the latest checkpoint (so `hybridlm eval RUN` and `hybridlm.load(RUN)` work)
    RUN/checkpoints/step-N/  older checkpoints kept by `--keep`
    RUN/loss.png, RUN/tensorboard/

The rules, checked before any work: a missing or empty directory starts a run; a finished or
interrupted run is continued with `resume` and replaced with `overwrite`, refused otherwise; a
directory holding anything hybridlm did not write, or what a run does not replace (a sweep's
results, token shards), is refused in every mode.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .checkpoint import CONFIG_FILE, WEIGHTS_FILE, save_state
from .data.tokenizer import TOKENIZER_FILE
from .optimizer_state import LAYOUT_FILE, TENSORS_FILE, optimizer_files
from .ownership import (
    MARKER,
    OwnershipError,
    check_replaceable,
    clear,
    describe,
    kind_of,
    marker,
    own,
    read_marker,
    remove_stale_staging,
)

STATE_FILE = "trainer_state.json"
RECIPE_FILE = "recipe.yaml"
METRICS_FILE = "metrics.jsonl"
KEPT_DIR = "checkpoints"
CHECKPOINT_FILES = (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, STATE_FILE, TENSORS_FILE, LAYOUT_FILE)


def check(path, resume: bool | str = False, overwrite: bool = False) -> bool:
    """Whether a run may be written at `path` (raises OwnershipError when not); True when it resumes.

    `resume`: True continues the run saved there (an error when there is none); "auto" continues
    it when there is one and starts otherwise. `overwrite` replaces a run or checkpoint hybridlm wrote."""
    path = Path(path)
    check_replaceable(path, "--out", writing="run")  # foreign files, sweeps, shards: refused in every mode
    saved = (path / STATE_FILE).exists()
    if resume and saved:
        return True
    if resume is True:
        raise OwnershipError(f"--resume: {path} holds no saved run ({STATE_FILE}); drop --resume to start one")
    if path.is_dir() and any(path.iterdir()) and not overwrite and resume != "auto":
        if saved:
            raise OwnershipError(
                f"{path} holds a training run saved at step {saved_step(path)}: --resume continues it, "
                "--overwrite replaces it"
            )
        held = "a run that saved no checkpoint yet" if kind_of(path) == "run" else describe(path)
        raise OwnershipError(f"{path} holds {held}, nothing to resume: --overwrite replaces it")
    return False


def prepare(path, resuming: bool) -> None:
    """After `check`: start a fresh run directory (emptying one hybridlm wrote), or keep the one
    resumed; staging folders of an interrupted save are removed either way."""
    path = Path(path)
    if not resuming:
        if path.is_dir():
            clear(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / MARKER).write_text(marker("run", []))
    remove_stale_staging(path)


def saved_step(path) -> int:
    return json.loads((Path(path) / STATE_FILE).read_text())["step"]


def write_owned(path, name: str, text: str) -> None:
    """Write a run-level file (the recipe, the loss plot's data) atomically and list it in the marker."""
    path = Path(path)
    temporary = path / f".{name}.tmp"
    temporary.write_text(text)
    os.replace(temporary, path / name)
    own(path, name)


def save_checkpoint(path, model_config, model_state, optimizer_state, tokenizer, train_state: dict, keep: int):
    """Replace the run's latest checkpoint atomically, carrying its run-level files and moving the
    previous checkpoint to checkpoints/step-N/ while fewer than `keep` are kept."""
    path = Path(path)
    carry = {
        name: path / name
        for name in (read_marker(path) or {"owns": []})["owns"]
        if name not in (*CHECKPOINT_FILES, MARKER, KEPT_DIR) and (path / name).exists()
    }
    older = sorted((path / KEPT_DIR).glob("step-*")) if (path / KEPT_DIR).is_dir() else []
    if (path / STATE_FILE).exists() and keep > 1:
        previous = f"{KEPT_DIR}/step-{saved_step(path):06d}"
        for name in CHECKPOINT_FILES:
            if (path / name).exists():
                carry[f"{previous}/{name}"] = path / name
    for folder in older[-(keep - 2) :] if keep > 2 else []:
        carry[f"{KEPT_DIR}/{folder.name}"] = folder
    save_state(
        model_config,
        model_state,
        path,
        tokenizer=tokenizer,
        extra_files={STATE_FILE: json.dumps(train_state, indent=2) + "\n", **optimizer_files(optimizer_state)},
        overwrite=True,
        kind="run",
        carry=carry,
    )
