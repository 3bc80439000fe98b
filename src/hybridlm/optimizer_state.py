"""An optimizer's full state dict as safetensors + JSON, so resuming a run never unpickles a file.

Tensors (AdamW's moments and step counts) go to `optimizer.safetensors` under their path in the
state dict (`state/layers.0.mixer.in_proj.weight/exp_avg`); everything else (parameter groups,
hyper-parameters) is JSON in `optimizer.json`, with tensors replaced by {"tensor": path}.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from .checkpoint import CheckpointError

TENSORS_FILE = "optimizer.safetensors"
LAYOUT_FILE = "optimizer.json"


def optimizer_files(state: dict) -> dict[str, bytes]:
    """The two files that hold `state` (a full, name-keyed optimizer state dict)."""
    tensors: dict[str, torch.Tensor] = {}

    def encode(value, path: str):
        if isinstance(value, torch.Tensor):
            tensors[path] = value.detach().contiguous().cpu()
            return {"tensor": path}
        if isinstance(value, dict):
            return {"mapping": {str(key): encode(item, f"{path}/{key}") for key, item in value.items()}}
        if isinstance(value, (list, tuple)):
            return {"list": [encode(item, f"{path}/{index}") for index, item in enumerate(value)]}
        return {"value": value}

    layout = encode(state, "")
    return {TENSORS_FILE: save(tensors), LAYOUT_FILE: (json.dumps(layout) + "\n").encode()}


def read_optimizer_state(directory) -> dict:
    """The state dict `optimizer_files` wrote to `directory`; CheckpointError when missing or corrupt."""
    directory = Path(directory)
    try:
        tensors = load((directory / TENSORS_FILE).read_bytes())
        layout = json.loads((directory / LAYOUT_FILE).read_text())
    except FileNotFoundError as error:
        raise CheckpointError(f"{directory}: missing {Path(error.filename).name}; cannot resume this run") from None
    except (SafetensorError, ValueError, OSError) as error:
        raise CheckpointError(f"{directory}: corrupt optimizer state ({error})") from None

    def decode(node):
        if not isinstance(node, dict) or len(node) != 1:
            raise CheckpointError(f"{directory / LAYOUT_FILE}: unexpected entry {node!r}")
        ((kind, value),) = node.items()
        if kind == "tensor":
            if value not in tensors:
                raise CheckpointError(f"{directory / TENSORS_FILE}: missing tensor {value}")
            return tensors[value]
        if kind == "mapping":
            return {key: decode(item) for key, item in value.items()}
        if kind == "list":
            return [decode(item) for item in value]
        return value

    return decode(layout)
