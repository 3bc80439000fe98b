"""Synthetic tasks that separate recall (attention) from compression (SSMs).

Every batch is a pure function of (task settings, seed, batch index): training resumes exactly and
train/test never overlap (test batches use a different seed stream). Targets are -100 where no
answer is asked, so loss and accuracy count only the answers.

Glossary: B batch, L sequence length, V vocabulary, K key-value pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ConfigError

IGNORE = -100


@dataclass(frozen=True)
class Batch:
    inputs: torch.Tensor  # (B, L) token ids
    targets: torch.Tensor  # (B, L) next-token answers, IGNORE where none is asked


def batch_generator(seed: int, index: int, split: str) -> torch.Generator:
    """The random stream of one batch: distinct for every (seed, index) and for train vs test."""
    stream = {"train": 0, "test": 1}[split]
    return torch.Generator().manual_seed((seed * 1_000_003 + index) * 2 + stream)


@dataclass(frozen=True)
class MQAR:
    """Multi-query associative recall (Arora et al. 2023, Zoology section 3.1).

    K key-value pairs `k1 v1 ... kK vK`, then each key queried once at positions drawn from a power
    law that favours short gaps (a = 0.01); the answer at a queried key is its value. Keys come from
    [1, V/2), values from [V/2, V); every other position holds a random token.
    """

    vocab_size: int = 256
    seq_len: int = 64
    n_pairs: int = 8
    power_a: float = 0.01

    def batch(self, batch_size: int, seed: int, index: int, split: str = "train") -> Batch:
        V, L, K = self.vocab_size, self.seq_len, self.n_pairs
        if 4 * K > L or V // 2 - 1 < K:
            raise ConfigError(f"MQAR needs seq_len >= 4 * n_pairs and vocab_size/2 > n_pairs (L={L}, K={K}, V={V})")
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
        return Batch(inputs, targets)


@dataclass(frozen=True)
class Passkey:
    """Needle in a haystack: random filler, `NEEDLE d1..dn` at a random depth, then `QUERY d1..dn`.

    Digits are tokens 0-9, filler 16..V-1, markers 10 (NEEDLE) and 11 (QUERY). The model must emit
    the digits after QUERY (Mohtashami & Jaggi 2023, token-level adaptation).
    """

    vocab_size: int = 64
    seq_len: int = 256
    n_digits: int = 4

    NEEDLE = 10
    QUERY = 11

    def batch(self, batch_size: int, seed: int, index: int, split: str = "train") -> Batch:
        L, n = self.seq_len, self.n_digits
        if L < 2 * n + 4 or self.vocab_size <= 16:
            raise ConfigError(
                f"passkey needs seq_len >= 2 * n_digits + 4 and vocab_size > 16 (L={L}, V={self.vocab_size})"
            )
        g = batch_generator(seed, index, split)
        inputs = torch.randint(16, self.vocab_size, (batch_size, L), generator=g)
        targets = torch.full((batch_size, L), IGNORE)
        digits = torch.randint(0, 10, (batch_size, n), generator=g)
        query_start = L - n - 1
        depth = torch.randint(0, query_start - n - 1, (batch_size,), generator=g)
        rows = torch.arange(batch_size).unsqueeze(1)
        needle = depth.unsqueeze(1) + torch.arange(n + 1)
        inputs[rows, needle] = torch.cat([torch.full((batch_size, 1), self.NEEDLE), digits], 1)
        inputs[:, query_start] = self.QUERY
        inputs[:, query_start + 1 :] = digits
        targets[:, query_start : query_start + n] = digits  # predict each digit from the one before
        return Batch(inputs, targets)


@dataclass(frozen=True)
class SelectiveCopy:
    """Selective copying (Gu & Dao 2023, section 4.1.1): n data tokens scattered among noise, then
    n SEP markers after which the data must be reproduced in order. Data 2..V-1, noise 0, SEP 1."""

    vocab_size: int = 16
    seq_len: int = 256
    n_tokens: int = 16

    def batch(self, batch_size: int, seed: int, index: int, split: str = "train") -> Batch:
        L, n = self.seq_len, self.n_tokens
        if L < 2 * n or self.vocab_size < 3:
            raise ConfigError(f"selective copy needs seq_len >= 2 * n_tokens and vocab_size >= 3 (L={L}, n={n})")
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
        return Batch(inputs, targets)


@dataclass(frozen=True)
class InductionHeads:
    """Induction heads (Olsson et al. 2022; Griffin section 6.2): a special token at a random
    position is followed by token X; the sequence ends with the special token, answer X.
    Special token 0, others 1..V-1."""

    vocab_size: int = 16
    seq_len: int = 256

    def batch(self, batch_size: int, seed: int, index: int, split: str = "train") -> Batch:
        L = self.seq_len
        if L < 4 or self.vocab_size < 2:
            raise ConfigError(f"induction heads needs seq_len >= 4 and vocab_size >= 2 (L={L}, V={self.vocab_size})")
        g = batch_generator(seed, index, split)
        inputs = torch.randint(1, self.vocab_size, (batch_size, L), generator=g)
        where = torch.randint(0, L - 3, (batch_size,), generator=g)
        rows = torch.arange(batch_size)
        inputs[rows, where] = 0
        inputs[:, -1] = 0
        targets = torch.full((batch_size, L), IGNORE)
        targets[:, -1] = inputs[rows, where + 1]
        return Batch(inputs, targets)


TASKS = {"mqar": MQAR, "passkey": Passkey, "copy": SelectiveCopy, "induction": InductionHeads}


def make_task(name: str, **settings):
    """A task by name with its settings (unknown names or settings raise ConfigError)."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}: choose one of {', '.join(TASKS)}, or text")
    try:
        return TASKS[name](**settings)
    except TypeError as error:
        raise ConfigError(f"task {name}: {error}") from None
