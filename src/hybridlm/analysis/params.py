"""Parameter counts per sub-layer and per layer type, read from the modules themselves.

Shared weights count once: the shared blocks appear as their own row, and every `S` row holds
only its per-invocation linear and adapters. Tied embeddings count once.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass

import torch

from ..config import ModelConfig
from ..layers import MIXERS
from ..layers.base import Mixer
from ..layers.registry import mixer_chars
from ..model import HybridLM
from ..pattern import attention_ratio


@dataclass
class LayerRow:
    index: int  # sub-layer index, or -1 for model-level rows
    char: str
    kind: str
    params: int
    note: str = ""


def build_meta(config: ModelConfig) -> HybridLM:
    """The model on the meta device: shapes and counts without allocating weights (built once per config)."""
    return _meta_model(config.to_json())


@functools.lru_cache(maxsize=32)
def _meta_model(config_json: str) -> HybridLM:
    with torch.device("meta"):
        return HybridLM(ModelConfig.from_json(config_json))


def build_sublayer(config: ModelConfig, char: str) -> Mixer:
    """One `char` sub-layer of `config` on the meta device, whatever the pattern holds."""
    with torch.device("meta"):
        return MIXERS[char].from_config(config, char, 0)


def layer_rows(model: HybridLM) -> list[LayerRow]:
    """One row per sub-layer plus embeddings, shared blocks, final norm and LM head."""
    config = model.config
    rows = [LayerRow(-1, "", "embedding", model.embed_tokens.weight.numel())]
    mixer_number, mixers = 0, mixer_chars()
    for index, layer in enumerate(model.layers):
        params = sum(p.numel() for p in layer.parameters())
        note = ""
        if layer.char in mixers:
            mixer_number += 1
            note = f"layer {mixer_number}"
        note = (note + layer.mixer.note()).removeprefix(", ")
        rows.append(LayerRow(index, layer.char, layer.mixer.chars[layer.char], params, note))
    for attribute, modules in model.shared_modules.items():
        name = attribute.removesuffix("s").replace("_", " ")  # shared_blocks -> "shared block"
        for block_index, block in enumerate(modules if isinstance(modules, torch.nn.ModuleList) else [modules]):
            count = sum(p.numel() for p in block.parameters())
            rows.append(LayerRow(-1, "", f"{name} {block_index}", count, "counted once"))
    rows.append(LayerRow(-1, "", "final norm", model.final_norm.weight.numel()))
    head = 0 if config.tie_embeddings else model.lm_head.weight.numel()
    rows.append(LayerRow(-1, "", "lm head", head, "tied to the embedding" if config.tie_embeddings else ""))
    return rows


def params_by_type(model: HybridLM) -> OrderedDict:
    """Parameters grouped by sub-layer kind (shared blocks under their family's kind), plus 'total'."""
    owners = {
        MIXERS[char].shared_attribute.removesuffix("s").replace("_", " "): MIXERS[char].chars[char]
        for char in dict.fromkeys(model.config.chars)
        if MIXERS[char].shared_attribute
    }
    groups: OrderedDict = OrderedDict()
    for row in layer_rows(model):
        kind = next((owner for prefix, owner in owners.items() if row.kind.startswith(prefix + " ")), row.kind)
        groups[kind] = groups.get(kind, 0) + row.params
    groups["total"] = model.num_parameters()
    return groups


def active_parameters(model: HybridLM) -> int:
    """Parameters a token uses: MoE layers count top_k of their experts (plus the router)."""
    total = model.num_parameters()
    for layer in model.layers:
        mixer = layer.mixer
        total -= sum(p.numel() for p in mixer.parameters()) - mixer.active_parameters()
    return total


def summary(model: HybridLM) -> dict:
    """Layers (mixers), attention ratio r and parameter totals of a model."""
    chars = model.config.chars
    mixers = [c for c in chars if c in mixer_chars()]
    return {
        "layers": len(mixers),
        "sublayers": len(chars),
        "attention_ratio": attention_ratio(chars),
        "params": model.num_parameters(),
        "active_params": active_parameters(model),
    }
