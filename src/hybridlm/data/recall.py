"""Associative recall: find a token by what it is next to, wherever it is (content addressing).

MQAR (Zoology) and induction heads (Olsson et al.). Every batch is a pure function of (settings,
seed, index, split). Glossary: B batch, L sequence length, V vocabulary, K key-value pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .batch import IGNORE, NO_SOURCE, Batch, batch_generator, in_range, require


@dataclass(frozen=True)
class MQAR:
    """Multi-query associative recall (Arora et al. 2023, Zoology section 3.1).

    K key-value pairs `k1 v1 ... kK vK`, then each key queried once at positions drawn from a power
    law that favours short gaps (a = 0.01); the answer at a queried key is its value. Keys come from
    [1, V/2), values from [V/2, V); every other position holds a random token.
    Buckets: `gap`, query position minus the position of its value.
    """

    vocab_size: int = 256
    seq_len: int = 64
    n_pairs: int = 8
    power_a: float = 0.01

    def __post_init__(self) -> None:
        in_range("mqar", "vocab_size", self.vocab_size, 4)
        in_range("mqar", "seq_len", self.seq_len, 4)
        limit = min(self.seq_len // 4, self.vocab_size // 2 - 1)
        require(
            1 <= self.n_pairs <= limit,
            f"MQAR needs seq_len >= 4 * n_pairs and vocab_size/2 > n_pairs: n_pairs = {self.n_pairs} is out of "
            f"range; allowed 1..{limit} (seq_len={self.seq_len}, vocab_size={self.vocab_size})",
        )
        require(self.power_a > 0, f"mqar: power_a = {self.power_a} is out of range; allowed > 0")

    def batch(self, batch_size: int, seed: int, index: int, split: str = "train") -> Batch:
        V, L, K = self.vocab_size, self.seq_len, self.n_pairs
        g = batch_generator(seed, index, split)
        keys = torch.argsort(torch.rand(batch_size, V // 2 - 1, generator=g), dim=1)[:, :K] + 1
        values = torch.argsort(torch.rand(batch_size, V - V // 2, generator=g), dim=1)[:, :K] + V // 2
        inputs = torch.randint(0, V, (batch_size, L), generator=g)
        targets = torch.full((batch_size, L), IGNORE)
        inputs[:, 0 : 2 * K : 2], inputs[:, 1 : 2 * K : 2] = keys, values
        slots = (L - 2 * K) // 2
        gap = torch.arange(1, slots + 1, dtype=torch.float64)
        weights = self.power_a * gap ** (self.power_a - 1)
        chosen = torch.multinomial(weights.expand(batch_size, slots), K, replacement=False, generator=g)
        positions = 2 * K + 2 * chosen  # even offsets in the query region
        order = torch.argsort(torch.rand(batch_size, K, generator=g), dim=1)
        rows = torch.arange(batch_size).unsqueeze(1)
        inputs[rows, positions] = keys.gather(1, order)
        targets[rows, positions] = values.gather(1, order)
        sources = torch.full((batch_size, L), NO_SOURCE)
        sources[rows, positions] = 2 * order + 1  # the value of the queried key
        return Batch(inputs, targets, sources, {"gap": _gaps(sources)})


@dataclass(frozen=True)
class InductionHeads:
    """Induction heads (Olsson et al. 2022; Griffin section 6.2): a special token at a random
    position is followed by token X; the sequence ends with the special token, answer X.
    Special token 0, others 1..V-1. Buckets: `gap`, from the first special token's successor to the end."""

    vocab_size: int = 16
    seq_len: int = 256

    def __post_init__(self) -> None:
        in_range("induction", "vocab_size", self.vocab_size, 2)
        in_range("induction", "seq_len", self.seq_len, 4)

    def batch(self, batch_size: int, seed: int, index: int, split: str = "train") -> Batch:
        L = self.seq_len
        g = batch_generator(seed, index, split)
        inputs = torch.randint(1, self.vocab_size, (batch_size, L), generator=g)
        where = torch.randint(0, L - 3, (batch_size,), generator=g)
        rows = torch.arange(batch_size)
        inputs[rows, where] = 0
        inputs[:, -1] = 0
        targets = torch.full((batch_size, L), IGNORE)
        targets[:, -1] = inputs[rows, where + 1]
        sources = torch.full((batch_size, L), NO_SOURCE)
        sources[:, -1] = where + 1
        return Batch(inputs, targets, sources, {"gap": _gaps(sources)})


def _gaps(sources: torch.Tensor) -> torch.Tensor:
    """(B, L) answer position minus source position, 0 where there is no answer."""
    positions = torch.arange(sources.shape[1]).expand_as(sources)
    return torch.where(sources == NO_SOURCE, 0, positions - sources)
