"""Decoding cost against context length (issue 3): per-token latency and cache bytes at N tokens.

The cache is filled to N tokens directly (random keys and values written through `KVCache.update`,
positions 0..N-1) instead of by a prefill: decoding cost depends on what the cache holds, not on
its values, and a 16K-token prefill of every preset would dominate the benchmark. SSM states keep
their fixed size whatever N is. The Jamba/Transformer pair is built at equal width, depth and
heads, so its KV bytes compare 1 attention layer in 8 against 8 in 8.
"""

from __future__ import annotations

import time

import torch

from ..cache import Cache, KVCache, State
from ..layers.registry import mixer_chars
from ..model import HybridLM
from ..presets import preset_config
from .timing import Row

CONTEXT_PRESETS = ("transformer", "mamba", "jamba", "griffin", "stripedhyena")
CONTEXTS = (1024, 4096, 16384)


def fill_cache(cache: Cache, n_tokens: int) -> None:
    """Make `cache` hold n_tokens tokens per row: random KV entries at positions 0..n-1."""
    for state in cache.states:
        _fill(state, n_tokens)
    cache.seen = torch.full_like(cache.seen, n_tokens)


def _fill(state, n_tokens: int) -> None:
    if isinstance(state, KVCache):
        batch, heads, _, head_dim = state.keys.shape
        shape = (batch, heads, n_tokens, head_dim)
        positions = torch.arange(n_tokens).expand(batch, n_tokens)
        state.update(torch.randn(shape, dtype=state.keys.dtype), torch.randn(shape, dtype=state.keys.dtype), positions)
    elif isinstance(state, State):
        for part in state.parts():
            _fill(part, n_tokens)


def kv_bytes(cache: Cache) -> int:
    """Bytes held by attention keys, values and slot positions (the part that grows with N)."""
    return sum(_kv_bytes(state) for state in cache.states)


def _kv_bytes(state) -> int:
    if isinstance(state, KVCache):
        return state.nbytes()
    if isinstance(state, State):
        return sum(_kv_bytes(part) for part in state.parts())
    return 0


def decode_latency(model: HybridLM, context: int, steps: int) -> tuple[float, Cache]:
    """Seconds per decoded token (batch 1) with `context` tokens in the cache, and the cache."""
    cache = model.allocate_cache(1, max_len=context + steps + 2)
    fill_cache(cache, context)
    token = torch.zeros(1, 1, dtype=torch.long)
    with torch.no_grad():
        for _ in range(2):  # warm-up
            model(token, cache=cache)
        start = time.perf_counter()
        for _ in range(steps):
            model(token, cache=cache)
    return (time.perf_counter() - start) / steps, cache


def context_rows(presets=CONTEXT_PRESETS, contexts=CONTEXTS, size: str = "small", steps: int = 32) -> list[Row]:
    rows = []
    for preset in presets:
        torch.manual_seed(0)
        model = HybridLM(preset_config(preset, size)).eval()
        shortest = None
        for context in contexts:
            seconds, cache = decode_latency(model, context, steps)
            shortest = shortest or seconds
            notes = {
                "context": context,
                "cache_bytes": cache.nbytes(),
                "kv_bytes": kv_bytes(cache),
                "latency_vs_shortest": seconds / shortest,
            }
            rows.append(Row("context", f"{preset} {size} decode at {context}", seconds, None, "", 1, notes))
            del cache
    return rows


def jamba_kv_rows(size: str = "small", context: int = 4096) -> list[Row]:
    """Jamba's KV bytes against a Transformer of the same width, depth, heads and KV heads."""
    jamba = preset_config("jamba", size)
    depth = sum(char in mixer_chars() for char in jamba.chars)
    transformer = jamba.with_overrides({"pattern": f"(AF)*{depth}"})
    rows = []
    for name, config in (("jamba", jamba), ("transformer at jamba's width and depth", transformer)):
        cache = HybridLM(config).eval().allocate_cache(1, max_len=context)
        fill_cache(cache, context)
        notes = {"context": context, "kv_bytes": kv_bytes(cache), "cache_bytes": cache.nbytes()}
        rows.append(Row("context", f"KV bytes: {name}", None, None, "", 0, notes))
    rows[0].notes["kv_fraction_of_transformer"] = rows[0].notes["kv_bytes"] / rows[1].notes["kv_bytes"]
    return rows
