"""What hybridlm wrote: a marker in every directory it writes, and the checks that keep it from
replacing or emptying anything else.

A directory hybridlm writes holds `hybridlm.json`: who wrote it, what kind of directory it is (a
training run, a checkpoint, a Hugging Face export, a sweep's results, token shards) and the names of
the entries it owns. A directory may be replaced or cleared only when it carries the marker, holds
nothing else, and is of a kind its new writer may replace (`REPLACES`: a training run never replaces
a sweep's results, nor a sweep a run); every output path is checked (creatable, writable, not below
a file) before any work starts.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .config import ConfigError

MARKER = "hybridlm.json"
STAGING_TAGS = (".staging.", ".old.")  # sibling folders of an interrupted atomic save: .NAME.staging.XXXX
KIND_NAMES = {
    "run": "a training run",
    "checkpoint": "a checkpoint",
    "hf-export": "an export",
    "sweep": "a sweep's results",
    "shards": "token shards",
}
# the kinds of directory that the writer of each kind may replace (an empty or missing one it always may)
REPLACES = {
    "run": ("run", "checkpoint", "hf-export"),
    "checkpoint": ("checkpoint", "hf-export"),
    "hf-export": ("checkpoint", "hf-export"),
    "sweep": ("sweep",),
}
WRITERS = {"run": "train", "checkpoint": "a checkpoint save", "hf-export": "an export", "sweep": "a sweep"}


class OwnershipError(ConfigError):
    """An output path hybridlm may not write: a foreign directory, a file in the way, no permission."""


def marker(kind: str, entries) -> str:
    from . import __version__

    owned = sorted({*entries, MARKER})
    return json.dumps({"written_by": "hybridlm", "version": __version__, "kind": kind, "owns": owned}, indent=2) + "\n"


def read_marker(directory) -> dict | None:
    """The marker of a directory hybridlm wrote, or None."""
    path = Path(directory) / MARKER
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("written_by") != "hybridlm" or not isinstance(data.get("owns"), list):
        return None
    return data


def foreign_entries(directory) -> list[str]:
    """Entries of `directory` hybridlm did not write (all of them when it carries no marker)."""
    directory = Path(directory)
    entries = sorted(entry.name for entry in directory.iterdir())
    found = read_marker(directory)
    owned = set(found["owns"]) if found else set()
    return [name for name in entries if name not in owned]


def kind_of(directory) -> str | None:
    """The kind its marker gives a directory hybridlm wrote ("run", "sweep" ...), or None."""
    return (read_marker(directory) or {}).get("kind")


def describe(directory) -> str:
    """What a directory hybridlm wrote holds, by its marker's kind ("a checkpoint", "a sweep's results" ...)."""
    return KIND_NAMES.get(kind_of(directory), "files")


def check_replaceable(directory, what: str = "directory", writing: str | None = None, by: str | None = None) -> None:
    """Raise unless `directory` is absent, empty, or wholly written by hybridlm and, when `writing` names
    the kind about to be written there, of a kind that one may replace (`REPLACES`); `by` names the writer."""
    directory = Path(directory)
    check_output_path(directory)
    if not directory.exists():
        return
    foreign = foreign_entries(directory)
    if foreign:
        shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
        raise OwnershipError(
            f"{directory} holds files hybridlm did not write ({shown}); refusing to replace it: choose another {what}"
        )
    if writing is not None and any(directory.iterdir()) and kind_of(directory) not in REPLACES[writing]:
        raise OwnershipError(
            f"{directory} holds {describe(directory)}, which {by or WRITERS[writing]} does not replace: "
            f"choose another {what}"
        )


def check_output_path(path) -> None:
    """Raise unless `path` is a directory, or can be created as one: no file at it or above it, and
    its nearest existing ancestor is writable."""
    path = Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise OwnershipError(f"{path} exists and is not a directory")
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OwnershipError(f"{path}: {ancestor} is a file, so nothing can be written below it")
    target = path if path.exists() else ancestor
    if not os.access(target, os.W_OK | os.X_OK):
        raise OwnershipError(f"{path}: {target} is not writable")
    if path.exists() and not os.access(path.parent, os.W_OK | os.X_OK):
        raise OwnershipError(f"{path}: its parent {path.parent} is not writable (a save replaces the directory)")


def own(directory, *names: str, kind: str = "run") -> None:
    """Add entries to the marker of a directory hybridlm writes (creating the marker of `kind`)."""
    directory = Path(directory)
    found = read_marker(directory) or {"kind": kind, "owns": []}
    (directory / MARKER).write_text(marker(found["kind"], [*found["owns"], *names]))


def clear(directory) -> None:
    """Empty a directory hybridlm wrote (checked first), keeping the directory itself."""
    check_replaceable(directory)
    for entry in Path(directory).iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def remove_stale_staging(directory) -> list[Path]:
    """Remove the staging folders an interrupted save of `directory` left beside it. Returns them."""
    directory = Path(directory).absolute()
    if not directory.parent.is_dir():
        return []
    stale = [
        entry
        for entry in directory.parent.iterdir()
        if entry.is_dir()
        and not entry.is_symlink()
        and any(entry.name.startswith(f".{directory.name}{tag}") for tag in STAGING_TAGS)
        and (read_marker(entry) is not None or not any(entry.iterdir()))  # ours: it carries the marker
    ]
    for entry in stale:
        shutil.rmtree(entry, ignore_errors=True)
    return stale
