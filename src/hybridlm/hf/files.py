"""Reading and writing Hugging Face checkpoint directories without unpickling anything.

A directory holds `config.json` and either `model.safetensors` or shards listed in
`model.safetensors.index.json` (`weight_map`: tensor name -> shard file). Tensors are read lazily,
one at a time, and every read checks the shape the config implies. `pytorch_model.bin` files are
refused: unpickling a file can run code.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..checkpoint import CheckpointError, atomic_directory, check_finite, follow_umask, read_config_json
from ..ownership import MARKER, marker

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
FLOAT_TAG = "__float__"  # transformers writes inf/nan as {"__float__": "Infinity"}
SPECIAL_FLOATS = {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}


def read_config(directory: Path) -> dict:
    """config.json of a checkpoint directory, with transformers' encoded infinities decoded."""
    return _decode_floats(read_config_json(directory))


def _decode_floats(value):
    if isinstance(value, dict):
        if set(value) == {FLOAT_TAG} and value[FLOAT_TAG] in SPECIAL_FLOATS:
            return SPECIAL_FLOATS[value[FLOAT_TAG]]
        return {key: _decode_floats(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode_floats(item) for item in value]
    return value


def _encode_floats(value):
    if isinstance(value, float) and not math.isfinite(value):
        return {FLOAT_TAG: "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")}
    if isinstance(value, dict):
        return {key: _encode_floats(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode_floats(item) for item in value]
    return value


class TensorSource:
    """The tensors of a checkpoint directory, read on demand; remembers which were read."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._handles: dict[str, object] = {}
        self.shard_of = self._weight_map()  # tensor name -> shard file name
        self.stored_name = {name: name for name in self.shard_of}  # differs for legacy names
        self.used: set[str] = set()

    def _weight_map(self) -> dict[str, str]:
        single, index = self.directory / WEIGHTS_FILE, self.directory / INDEX_FILE
        if single.exists():
            names = self._open(WEIGHTS_FILE).keys()
            return {name: WEIGHTS_FILE for name in names}
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
                raise CheckpointError(f"{index}: not a valid safetensors index ({error})") from None
            for shard in sorted(set(weight_map.values())):
                names = set(self._open(shard).keys())
                listed = {name for name, file in weight_map.items() if file == shard}
                if not listed <= names:
                    missing = sorted(listed - names)[0]
                    raise CheckpointError(f"{self.directory / shard}: lacks {missing}, which {INDEX_FILE} places there")
            return dict(weight_map)
        pickled = [name for name in PICKLE_FILES if (self.directory / name).exists()]
        hint = (
            f" (found {pickled[0]}, which hybridlm does not unpickle: re-save it with "
            "save_pretrained(..., safe_serialization=True))"
            if pickled
            else ""
        )
        raise CheckpointError(f"{self.directory}: missing {WEIGHTS_FILE} or {INDEX_FILE}{hint}")

    def _open(self, file: str):
        if file not in self._handles:
            path = self.directory / file
            if not path.exists():
                raise CheckpointError(f"{self.directory}: missing weight file {file}")
            try:
                self._handles[file] = safe_open(str(path), framework="pt")
            except (SafetensorError, OSError) as error:
                raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({error})") from None
        return self._handles[file]

    def accept_legacy_names(self, legacy: dict[str, str]) -> None:
        """Read a tensor stored under an old name (legacy -> current) as if it had the current one."""
        for old, new in legacy.items():
            if old in self.shard_of and new not in self.shard_of:
                self.shard_of[new] = self.shard_of.pop(old)
                self.stored_name[new] = self.stored_name.pop(old)

    def names(self) -> set[str]:
        return set(self.shard_of)

    def get(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """The tensor `name`, checked to have `shape` (what config.json implies)."""
        if name not in self.shard_of:
            raise CheckpointError(f"{self.directory}: missing tensor {name} (config.json implies it)")
        handle = self._open(self.shard_of[name])
        found = tuple(handle.get_slice(self.stored_name[name]).get_shape())
        if found != tuple(shape):
            raise CheckpointError(
                f"{self.directory}: shape mismatch for {name}: file {found}, config.json implies {tuple(shape)}"
            )
        try:
            tensor = handle.get_tensor(self.stored_name[name])
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"{self.directory}: cannot read {name} ({error})") from None
        self.used.add(name)
        return tensor


def write_checkpoint(
    directory: Path, config: dict, tensors: dict[str, torch.Tensor], extra_files=None, overwrite: bool = False
) -> Path:
    """Write config.json + model.safetensors (+ `extra_files`, {name: bytes}) to `directory` atomically;
    an earlier export there is replaced only with `overwrite`."""
    contiguous = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
    check_finite(contiguous, f"refusing to export {directory}")
    with atomic_directory(directory, "hf-export", overwrite=overwrite) as staging:
        (staging / CONFIG_FILE).write_text(json.dumps(_encode_floats(config), indent=2, sort_keys=True) + "\n")
        save_file(contiguous, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        for name, content in (extra_files or {}).items():
            (staging / name).write_bytes(content)
        for entry in staging.iterdir():
            follow_umask(entry)
        (staging / MARKER).write_text(marker("hf-export", [entry.name for entry in staging.iterdir()]))
    return directory
