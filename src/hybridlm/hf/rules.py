"""Name and layout rules between our state dict and a Hugging Face checkpoint, both directions.

A `Rule` ties a few of our tensors to a few of theirs with two inverse functions (most rules are a
rename; a few fuse or split tensors, or reorder rows). A family lists one rule per tensor; the
engine checks the list covers our state dict exactly, derives the shapes config.json implies by
running the rules on meta tensors, and converts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..checkpoint import CheckpointError
from .files import TensorSource


def _identity(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tensors


@dataclass(frozen=True)
class Rule:
    ours: tuple[str, ...]
    theirs: tuple[str, ...]
    to_ours: Callable[..., tuple] = _identity  # their tensors -> our tensors
    to_theirs: Callable[..., tuple] = _identity  # our tensors -> their tensors


def rename(ours: str, theirs: str) -> Rule:
    return Rule((ours,), (theirs,))


def reshaped(ours: str, theirs: str, to_ours: Callable, to_theirs: Callable) -> Rule:
    """One tensor each side, related by a single-tensor function and its inverse."""
    return Rule((ours,), (theirs,), lambda t: (to_ours(t),), lambda t: (to_theirs(t),))


# Per-mixer name tables: our suffix -> theirs, or (theirs, to_ours, to_theirs). Biases are listed
# too; a rule exists only for the tensors our model holds.
def _add_head(t):
    return t.unsqueeze(0)


def _drop_head(t):
    return t.squeeze(0)


MAMBA1_NAMES = {  # Mamba / Jamba (one head): x_proj and dt_proj are plain nn.Linear there
    "in_proj.weight": "in_proj.weight",
    "in_proj.bias": "in_proj.bias",
    "conv.weight": "conv1d.weight",
    "conv.bias": "conv1d.bias",
    "x_proj_weight": ("x_proj.weight", _add_head, _drop_head),
    "dt_proj_weight": ("dt_proj.weight", _add_head, _drop_head),
    "dt_proj_bias": ("dt_proj.bias", _add_head, _drop_head),
    "A_log": "A_log",
    "D": "D",
    "out_proj.weight": "out_proj.weight",
    "out_proj.bias": "out_proj.bias",
    "dt_norm.weight": "dt_layernorm.weight",
    "B_norm.weight": "b_layernorm.weight",
    "C_norm.weight": "c_layernorm.weight",
}
MAMBA2_NAMES = {
    "in_proj.weight": "in_proj.weight",
    "in_proj.bias": "in_proj.bias",
    "conv.weight": "conv1d.weight",
    "conv.bias": "conv1d.bias",
    "dt_bias": "dt_bias",
    "A_log": "A_log",
    "D": "D",
    "norm.weight": "norm.weight",
    "out_proj.weight": "out_proj.weight",
    "out_proj.bias": "out_proj.bias",
}
SAME_NAMES = None  # attention, MLP and MoE use the names transformers uses (router, experts.{e}.*)


def prefixed(names, our_prefix: str, their_prefix: str, table: dict | None = SAME_NAMES) -> list[Rule]:
    """Rules for every name under `our_prefix`, mapped through `table` (None: same suffix); a table
    entry of None skips a tensor that another rule covers."""
    rules = []
    for name in names:
        if not name.startswith(our_prefix):
            continue
        suffix = name[len(our_prefix) :]
        spec = suffix if table is None else table[suffix]
        if spec is None:  # covered by a rule of its own (a fused tensor)
            continue
        if isinstance(spec, str):
            rules.append(rename(name, their_prefix + spec))
        else:
            their_suffix, to_ours, to_theirs = spec
            rules.append(reshaped(name, their_prefix + their_suffix, to_ours, to_theirs))
    return rules


def backbone_rules(config, names, mixer_names: dict) -> list[Rule]:
    """Mamba / Mamba2: `backbone.` embeddings, one norm + mixer per layer, `norm_f`."""
    found = [
        rename("embed_tokens.weight", "backbone.embeddings.weight"),
        rename("final_norm.weight", "backbone.norm_f.weight"),
    ]
    for index in range(len(config.chars)):
        found.append(rename(f"layers.{index}.norm.weight", f"backbone.layers.{index}.norm.weight"))
        found += prefixed(names, f"layers.{index}.mixer.", f"backbone.layers.{index}.mixer.", mixer_names)
    return found


def decoder_rules(config, names, ssm_char: str, ssm_names: dict) -> list[Rule]:
    """Jamba / Bamba: `model.layers.i` = mixer (SSM as `mamba.`, attention as `self_attn.`) + FFN."""
    found = [
        rename("embed_tokens.weight", "model.embed_tokens.weight"),
        rename("final_norm.weight", "model.final_layernorm.weight"),
    ]
    for layer in range(len(config.chars) // 2):
        mixer, ffn, prefix = 2 * layer, 2 * layer + 1, f"model.layers.{layer}."
        found.append(rename(f"layers.{mixer}.norm.weight", prefix + "input_layernorm.weight"))
        found.append(rename(f"layers.{ffn}.norm.weight", prefix + "pre_ff_layernorm.weight"))
        if config.chars[mixer] == ssm_char:
            found += prefixed(names, f"layers.{mixer}.mixer.", prefix + "mamba.", ssm_names)
        else:
            found += prefixed(names, f"layers.{mixer}.mixer.", prefix + "self_attn.")
        found += prefixed(names, f"layers.{ffn}.mixer.", prefix + "feed_forward.")
    return found


def check_coverage(rules: list[Rule], names: set[str]) -> None:
    """Every tensor of ours is covered by exactly one rule (a family bug otherwise)."""
    covered = [name for rule in rules for name in rule.ours]
    if sorted(covered) != sorted(names):
        missing, extra = sorted(names - set(covered)), sorted(set(covered) - names)
        raise AssertionError(f"HF rules do not cover the state dict: missing {missing[:3]}, extra {extra[:3]}")


def their_shapes(rules: list[Rule], our_shapes: dict[str, torch.Size]) -> dict[str, tuple[int, ...]]:
    """The shape of every Hugging Face tensor our config implies (rules run on meta tensors)."""
    shapes = {}
    for rule in rules:
        ours = [torch.empty(our_shapes[name], device="meta") for name in rule.ours]
        for name, tensor in zip(rule.theirs, rule.to_theirs(*ours)):
            shapes[name] = tuple(tensor.shape)
    return shapes


def import_tensors(rules: list[Rule], source: TensorSource, our_shapes: dict) -> dict[str, torch.Tensor]:
    """Read and convert every tensor; shape errors name the Hugging Face tensor."""
    expected = their_shapes(rules, our_shapes)
    state = {}
    for rule in rules:
        theirs = [source.get(name, expected[name]) for name in rule.theirs]
        for name, tensor in zip(rule.ours, rule.to_ours(*theirs)):
            state[name] = tensor
    return state


def export_tensors(rules: list[Rule], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    tensors = {}
    for rule in rules:
        for name, tensor in zip(rule.theirs, rule.to_theirs(*(state[name] for name in rule.ours))):
            tensors[name] = tensor
    return tensors


def reject_unused(source: TensorSource, ignorable) -> None:
    """Tensors the config does not explain mean the config and the weights disagree."""
    unused = sorted(name for name in source.names() - source.used if not ignorable(name))
    if unused:
        more = f" and {len(unused) - 3} more" if len(unused) > 3 else ""
        raise CheckpointError(
            f"{source.directory}: tensors config.json does not account for: {', '.join(unused[:3])}{more}"
        )
