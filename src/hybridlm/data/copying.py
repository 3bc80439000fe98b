"""Copying: reproduce tokens by where they are (position addressing).

Selective copying (Mamba) and a fixed-offset copy (`lag`), the position-dominant control task of
the content-vs-position estimator. Glossary: B batch, L sequence length, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .batch import IGNORE, NO_SOURCE, Batch, batch_generator, in_range, require
from .recall import _gaps


@dataclass(frozen=True)
class SelectiveCopy:
    """Selective copying (Gu & Dao 2023, section 4.1.1): n data tokens scattered among noise, then
    n SEP markers after which the data must be reproduced in order. Data 2..V-1, noise 0, SEP 1.
    Buckets: `gap`, answer position minus the data token's position."""

    vocab_size: int = 16
    seq_len: int = 256
    n_tokens: int = 16

    def __post_init__(self) -> None:
        in_range("copy", "vocab_size", self.vocab_size, 3)
        in_range("copy", "n_tokens", self.n_tokens, 1)
        require(
            self.seq_len >= 2 * self.n_tokens,
            f"selective copy needs seq_len >= 2 * n_tokens: seq_len = {self.seq_len} is out of range; "
            f"allowed >= {2 * self.n_tokens} (n_tokens={self.n_tokens})",
        )

    def batch(self, batch_size: int, seed: int, index: int, split: str = "train") -> Batch:
        L, n = self.seq_len, self.n_tokens
        g = batch_generator(seed, index, split)
        body = L - n
        positions = torch.sort(torch.argsort(torch.rand(batch_size, body, generator=g), 1)[:, :n], 1).values
        data = torch.randint(2, self.vocab_size, (batch_size, n), generator=g)
        inputs = torch.zeros(batch_size, L, dtype=torch.long)
        rows = torch.arange(batch_size).unsqueeze(1)
        inputs[rows, positions] = data
        inputs[:, body:] = 1
        targets = torch.full((batch_size, L), IGNORE)
        targets[:, body:] = data  # reading the i-th SEP, emit the i-th data token
        sources = torch.full((batch_size, L), NO_SOURCE)
        sources[:, body:] = positions
        return Batch(inputs, targets, sources, {"gap": _gaps(sources)})


@dataclass(frozen=True)
class Lag:
    """Fixed-offset copy: random tokens; at every position t >= lag the answer is the token read
    `lag` positions earlier, x[t - lag]. Where to look is fixed by position alone; what is there is
    arbitrary (the position-dominant end of the content/position axis, Waleffe et al. 2024)."""

    vocab_size: int = 16
    seq_len: int = 64
    lag: int = 4

    def __post_init__(self) -> None:
        in_range("lag", "vocab_size", self.vocab_size, 2)
        in_range("lag", "seq_len", self.seq_len, 2)
        in_range("lag", "lag", self.lag, 1, self.seq_len - 1)

    def batch(self, batch_size: int, seed: int, index: int, split: str = "train") -> Batch:
        L, lag = self.seq_len, self.lag
        g = batch_generator(seed, index, split)
        inputs = torch.randint(0, self.vocab_size, (batch_size, L), generator=g)
        targets = torch.full((batch_size, L), IGNORE)
        targets[:, lag:] = inputs[:, : L - lag]
        sources = torch.full((batch_size, L), NO_SOURCE)
        sources[:, lag:] = torch.arange(L - lag)
        return Batch(inputs, targets, sources, {"gap": _gaps(sources)})
