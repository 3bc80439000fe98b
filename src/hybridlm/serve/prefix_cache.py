"""Prefix state cache: exact snapshots of every layer's state after a prompt prefix, reused by
later prompts that start with the same tokens.

A hybrid cannot share KV blocks alone: its SSM, conv, ring-buffer and modal states at position k
summarise the whole prefix, so the unit of reuse is the full cache at k. Prefixes are cut at
multiples of `block` tokens, and prefill always runs in chunks ending on those multiples, so a
request resumed from a snapshot performs exactly the computations it would have performed
without it: outputs are identical, not merely close. Memory is bounded by a byte budget,
evicting the least recently used snapshot first.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from ..cache import Cache, clone_cache

log = logging.getLogger(__name__)


class PrefixCache:
    def __init__(self, budget_bytes: int, block: int):
        if block < 1:
            raise ValueError(f"prefix block must be >= 1 token, got {block}")
        self.budget_bytes, self.block = budget_bytes, block
        self.snapshots: OrderedDict[tuple[int, ...], Cache] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0

    def boundaries(self, n_tokens: int) -> range:
        """Block multiples strictly inside a prompt of `n_tokens` (the last token is always run)."""
        return range(self.block, n_tokens, self.block)

    def lookup(self, prompt: list[int]) -> tuple[int, Cache | None]:
        """(k, a private copy of the state after prompt[:k]) for the longest stored k, else (0, None)."""
        for k in reversed(self.boundaries(len(prompt))):
            key = tuple(prompt[:k])
            if key in self.snapshots:
                self.snapshots.move_to_end(key)
                self.hits += 1
                return k, clone_cache(self.snapshots[key])
        self.misses += 1
        return 0, None

    def store(self, prefix: list[int], cache: Cache) -> None:
        """Keep a snapshot of `cache`, the state after `prefix`, evicting old ones to fit the budget."""
        key = tuple(prefix)
        if key in self.snapshots:
            self.snapshots.move_to_end(key)
            return
        snapshot = clone_cache(cache)
        size = snapshot.nbytes()
        if size > self.budget_bytes:
            return
        while self.bytes + size > self.budget_bytes:
            _, evicted = self.snapshots.popitem(last=False)
            self.bytes -= evicted.nbytes()
        self.snapshots[key] = snapshot
        self.bytes += size
        log.debug("prefix snapshot of %d tokens (%d bytes, %d held)", len(prefix), size, self.bytes)

    def stats(self) -> dict:
        return {"entries": len(self.snapshots), "bytes": self.bytes, "hits": self.hits, "misses": self.misses}
