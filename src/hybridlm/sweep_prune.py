"""Axes that change nothing for a point: decided on the built model, not on a table of which option
belongs to which layer.

An axis is inert at a point when every representative value of it (its choices, or a range's
ends) gives the same fingerprint: the model built from the same seed has the same parameter shapes
and values, the same logits on a fixed probe batch of the training length, and the same costs
(cache bytes at the sweep's context, decode FLOPs per token). So `mamba.d_state` is inert for a
pattern without M, `attention.window` for one without L (and for windows beyond the training
length whose cache costs match), `moe.*` without E. Recipe axes (`train.*`) are never pruned.
"""

from __future__ import annotations

import functools
import json

import torch

from .analysis.cache_size import cache_bytes
from .analysis.flops import model_flops
from .config import ConfigError, ModelConfig
from .recipe import TrainConfig

PROBE_SEED = 0


def inert_axes(base: ModelConfig, recipe: TrainConfig, overrides: dict, space: dict, cost_len: int) -> list[str]:
    """The model axes of `overrides` whose every representative value gives this point's model."""
    from .sweep import representatives

    seq_len = recipe.task_settings.get("seq_len", recipe.seq_len)
    model_overrides = {axis: value for axis, value in overrides.items() if not axis.startswith("train.")}
    reference = _fingerprint(_config_text(base, model_overrides), seq_len, cost_len)
    inert = []
    for axis in model_overrides:
        if axis == "pattern":
            continue
        alternatives = [value for value in representatives(space[axis]) if value != model_overrides[axis]]
        if all(
            _same(reference, _fingerprint(_config_text(base, {**model_overrides, axis: value}), seq_len, cost_len))
            for value in alternatives
        ):
            inert.append(axis)
    return inert


def _config_text(base: ModelConfig, overrides: dict) -> str | None:
    try:
        return json.dumps(base.with_overrides(overrides).to_dict(), sort_keys=True)
    except ConfigError:  # an alternative value this point does not admit: it changes something
        return None


def _same(first, second) -> bool:
    if first is None or second is None:
        return False
    (shapes_a, logits_a, costs_a), (shapes_b, logits_b, costs_b) = first, second
    return shapes_a == shapes_b and costs_a == costs_b and torch.equal(logits_a, logits_b)


@functools.lru_cache(maxsize=256)
def _fingerprint(config_text: str | None, seq_len: int, cost_len: int):
    """(parameter names and shapes, logits on the probe batch, costs) of the model built from seed 0
    (its parameter values enter through the logits)."""
    from .model import HybridLM

    if config_text is None:
        return None
    config = ModelConfig.from_dict(json.loads(config_text))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(PROBE_SEED)
        model = HybridLM(config).eval()
        probe = torch.randint(config.vocab_size, (1, seq_len), generator=torch.Generator().manual_seed(PROBE_SEED))
        with torch.no_grad():
            logits = model(probe)
    shapes = tuple((name, tuple(p.shape)) for name, p in model.named_parameters())
    costs = (
        sum(row.total for row in cache_bytes(config, cost_len, 1, "float32")),
        model_flops(config, cost_len).decode_per_token,
    )
    return shapes, logits, costs
