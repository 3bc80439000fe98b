"""Parameter counts per sub-layer and per layer type, read from the modules themselves.

Shared weights count once: the shared blocks appear as their own row, and every `S` row holds
only its per-invocation linear and adapters. Tied embeddings count once.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from ..config import ModelConfig
from ..model import HybridLM
from ..pattern import MIXER_CHARS, SUBLAYER_NAMES, attention_ratio


@dataclass
class LayerRow:
    index: int  # sub-layer index, or -1 for model-level rows
    char: str
    kind: str
    params: int
    note: str = ""


def build_meta(config: ModelConfig) -> HybridLM:
    """The model on the meta device: shapes and counts without allocating weights."""
    with torch.device("meta"):
        return HybridLM(config)


def layer_rows(model: HybridLM) -> list[LayerRow]:
    """One row per sub-layer plus embeddings, shared blocks, final norm and LM head."""
    config = model.config
    rows = [LayerRow(-1, "", "embedding", model.embed_tokens.weight.numel())]
    mixer_number = 0
    for index, layer in enumerate(model.layers):
        params = sum(p.numel() for p in layer.parameters())
        note = ""
        if layer.char in MIXER_CHARS:
            mixer_number += 1
            note = f"layer {mixer_number}"
        if layer.char == "S":
            note += f", block {layer.mixer.block_index}"
        if layer.char in "AL" and layer.mixer.window is not None:
            note += f", window {layer.mixer.window}"
        rows.append(LayerRow(index, layer.char, SUBLAYER_NAMES[layer.char], params, note))
    if model.shared_blocks is not None:
        for block_index, block in enumerate(model.shared_blocks):
            rows.append(
                LayerRow(
                    -1, "", f"shared block {block_index}", sum(p.numel() for p in block.parameters()), "counted once"
                )
            )
    rows.append(LayerRow(-1, "", "final norm", model.final_norm.weight.numel()))
    head = 0 if config.tie_embeddings else model.lm_head.weight.numel()
    rows.append(LayerRow(-1, "", "lm head", head, "tied to the embedding" if config.tie_embeddings else ""))
    return rows


def params_by_type(model: HybridLM) -> OrderedDict:
    """Parameters grouped by sub-layer kind (shared blocks under 'shared_attention'), plus 'total'."""
    groups: OrderedDict = OrderedDict()
    for row in layer_rows(model):
        kind = "shared_attention" if row.kind.startswith("shared block") else row.kind
        groups[kind] = groups.get(kind, 0) + row.params
    groups["total"] = model.num_parameters()
    return groups


def active_parameters(model: HybridLM) -> int:
    """Parameters a token uses: MoE layers count top_k of their experts (plus the router)."""
    total = model.num_parameters()
    for layer in model.layers:
        if layer.char == "E":
            experts = layer.mixer.experts
            per_expert = sum(p.numel() for p in experts[0].parameters())
            total -= per_expert * (len(experts) - layer.mixer.top_k)
    return total


def summary(model: HybridLM) -> dict:
    """Layers (mixers), attention ratio r and parameter totals of a model."""
    chars = model.config.chars
    mixers = [c for c in chars if c in MIXER_CHARS]
    return {
        "layers": len(mixers),
        "sublayers": len(chars),
        "attention_ratio": attention_ratio(chars),
        "params": model.num_parameters(),
        "active_params": active_parameters(model),
    }
