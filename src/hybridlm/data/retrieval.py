"""Long-context retrieval: a needle in a haystack (passkey) and a phonebook lookup.

Both ask for a whole multi-digit number, scored as exact match (every digit right), with the
needle's depth controlled (`depth` in [0, 1], or drawn uniformly when None) so accuracy can be
read per depth and per length. Glossary: B batch, L sequence length, V vocabulary, n digits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .batch import IGNORE, NO_SOURCE, Batch, batch_generator, in_range, require

DIGITS = 10  # token ids 0-9 are the digits
FIRST_WORD = 16  # filler, keys and name tokens use ids 16..V-1


@dataclass(frozen=True)
class Passkey:
    """Needle in a haystack (Mohtashami & Jaggi 2023; RULER's distractor needles), token level.

    Random filler (ids 16..V-1, not a constant pattern an SSM could ignore) holds the needle
    `NEEDLE k d1..dn` with its start at `depth` of the haystack (0: first token, 1: just before
    the query) and `n_distractors` more needles with other keys at random places; the sequence
    ends with `QUERY k d1..dn`, and the model must emit the digits of key k (teacher-forced, one
    answer per digit). Markers: NEEDLE 10, QUERY 11. Buckets: `depth` in percent.
    """

    vocab_size: int = 64
    seq_len: int = 256
    n_digits: int = 4
    depth: float | None = None
    n_distractors: int = 0

    NEEDLE = 10
    QUERY = 11

    def __post_init__(self) -> None:
        in_range("passkey", "n_digits", self.n_digits, 1)
        in_range("passkey", "n_distractors", self.n_distractors, 0)
        in_range("passkey", "vocab_size", self.vocab_size, FIRST_WORD + self.n_distractors + 1)
        if self.depth is not None:
            in_range("passkey", "depth", self.depth, 0, 1)
        shortest = (2 * self.n_distractors + 3) * self.needle_width + self.needle_width
        require(
            self.seq_len >= shortest,
            f"passkey needs seq_len >= {shortest} for {self.n_digits} digits and {self.n_distractors} distractors: "
            f"seq_len = {self.seq_len} is out of range",
        )

    @property
    def needle_width(self) -> int:
        return self.n_digits + 2  # NEEDLE k d1..dn (the query block has the same width)

    def batch(self, batch_size: int, seed: int, index: int, split: str = "train") -> Batch:
        L, n, w = self.seq_len, self.n_digits, self.needle_width
        haystack = L - w
        g = batch_generator(seed, index, split)
        inputs = torch.randint(FIRST_WORD, self.vocab_size, (batch_size, L), generator=g)
        targets = torch.full((batch_size, L), IGNORE)
        sources = torch.full((batch_size, L), NO_SOURCE)
        depth = torch.zeros(batch_size, L, dtype=torch.long)
        answers = torch.arange(haystack + 1, haystack + 1 + n)  # reading k, d1..d(n-1): emit d1..dn
        for row in range(batch_size):
            keys = torch.randperm(self.vocab_size - FIRST_WORD, generator=g)[: self.n_distractors + 1] + FIRST_WORD
            digits = torch.randint(0, DIGITS, (self.n_distractors + 1, n), generator=g)
            last_start = haystack - w
            if self.depth is None:
                start = int(torch.randint(0, last_start + 1, (1,), generator=g))
            else:
                start = round(self.depth * last_start)
            starts = _place(haystack, w, start, self.n_distractors, g)
            for needle, at in enumerate(starts):
                inputs[row, at] = self.NEEDLE
                inputs[row, at + 1] = keys[needle]
                inputs[row, at + 2 : at + w] = digits[needle]
            inputs[row, haystack] = self.QUERY
            inputs[row, haystack + 1] = keys[0]
            inputs[row, haystack + 2 :] = digits[0]
            targets[row, answers] = digits[0]
            sources[row, answers] = torch.arange(start + 2, start + 2 + n)
            depth[row, answers] = round(100 * start / last_start) if last_start else 0
        return Batch(inputs, targets, sources, {"depth": depth})


def _place(haystack: int, width: int, first: int, extra: int, g: torch.Generator) -> list[int]:
    """Starts of 1 + extra non-overlapping spans of `width` in [0, haystack): `first`, then uniform
    draws among the starts still free (the settings check guarantees one is always left)."""
    occupied = torch.zeros(haystack, dtype=torch.bool)
    starts = [first]
    occupied[first : first + width] = True
    for _ in range(extra):
        covered = torch.cat([torch.zeros(1, dtype=torch.long), occupied.long().cumsum(0)])
        free = ((covered[width:] - covered[:-width]) == 0).nonzero().flatten()
        at = int(free[torch.randint(0, len(free), (1,), generator=g)])
        occupied[at : at + width] = True
        starts.append(at)
    return starts


@dataclass(frozen=True)
class Phonebook:
    """Phonebook lookup (Jelassi et al. 2024, token level): `n_entries` lines `name : number`,
    a blank line, `n_demos` entries repeated from the book as demonstrations, a blank line, then
    a name from the book and `:`; the model must emit its number (exact match on all digits).

    Names are `name_tokens` ids from 16..V-1, distinct within a book; numbers `n_digits` digits.
    The queried entry sits at `depth` of the book (None: uniform). Tokens: digits 0-9, ':' 10,
    newline 11. The sequence length follows from the settings (`seq_len`). Buckets: `depth`.
    """

    vocab_size: int = 128
    n_entries: int = 16
    name_tokens: int = 2
    n_digits: int = 4
    n_demos: int = 2
    depth: float | None = None

    COLON = 10
    NEWLINE = 11

    def __post_init__(self) -> None:
        in_range("phonebook", "vocab_size", self.vocab_size, FIRST_WORD + 2)
        in_range("phonebook", "name_tokens", self.name_tokens, 1)
        in_range("phonebook", "n_digits", self.n_digits, 1)
        names = (self.vocab_size - FIRST_WORD) ** self.name_tokens
        in_range("phonebook", "n_entries", self.n_entries, 1, min(names // 2, 100_000))
        in_range("phonebook", "n_demos", self.n_demos, 0, self.n_entries - 1)
        if self.depth is not None:
            in_range("phonebook", "depth", self.depth, 0, 1)

    @property
    def entry_width(self) -> int:
        return self.name_tokens + self.n_digits + 2  # name : digits newline

    @property
    def seq_len(self) -> int:
        return (self.n_entries + self.n_demos) * self.entry_width + 2 + self.name_tokens + 1 + self.n_digits

    def batch(self, batch_size: int, seed: int, index: int, split: str = "train") -> Batch:
        N, nt, n, e, L = self.n_entries, self.name_tokens, self.n_digits, self.entry_width, self.seq_len
        base = self.vocab_size - FIRST_WORD
        g = batch_generator(seed, index, split)
        inputs = torch.empty(batch_size, L, dtype=torch.long)
        targets = torch.full((batch_size, L), IGNORE)
        sources = torch.full((batch_size, L), NO_SOURCE)
        depth = torch.zeros(batch_size, L, dtype=torch.long)
        query = L - n - 1 - nt  # the queried name's first token
        answers = torch.arange(query + nt, query + nt + n)  # reading ':' and d1..d(n-1): emit d1..dn
        powers = base ** torch.arange(nt - 1, -1, -1)
        for row in range(batch_size):
            ids = _distinct(N, base**nt, g)
            names = (ids.unsqueeze(1) // powers) % base + FIRST_WORD  # (N, nt)
            numbers = torch.randint(0, DIGITS, (N, n), generator=g)
            asked = int(torch.randint(0, N, (1,), generator=g)) if self.depth is None else round(self.depth * (N - 1))
            others = [i for i in torch.randperm(N, generator=g).tolist() if i != asked]
            entries = [self._entry(names[i], numbers[i]) for i in range(N)]
            demos = [entries[i] for i in others[: self.n_demos]]
            blank = torch.tensor([self.NEWLINE])
            inputs[row] = torch.cat(
                [*entries, blank, *demos, blank, names[asked], torch.tensor([self.COLON]), numbers[asked]]
            )
            targets[row, answers] = numbers[asked]
            sources[row, answers] = torch.arange(asked * e + nt + 1, asked * e + nt + 1 + n)
            depth[row, answers] = round(100 * asked / (N - 1)) if N > 1 else 0
        return Batch(inputs, targets, sources, {"depth": depth})

    def _entry(self, name: torch.Tensor, number: torch.Tensor) -> torch.Tensor:
        return torch.cat([name, torch.tensor([self.COLON]), number, torch.tensor([self.NEWLINE])])


def _distinct(count: int, space: int, g: torch.Generator) -> torch.Tensor:
    """`count` distinct integers drawn uniformly from [0, space) (redrawing repeats)."""
    ids = torch.randint(0, space, (count,), generator=g)
    while True:
        _, first = _first_occurrence(ids)
        repeats = ~first
        if not repeats.any():
            return ids
        ids[repeats] = torch.randint(0, space, (int(repeats.sum()),), generator=g)


def _first_occurrence(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted unique values, mask of the entries that are the first of their value)."""
    values, inverse = torch.unique(ids, return_inverse=True)
    first_index = torch.full((len(values),), len(ids)).scatter_reduce(0, inverse, torch.arange(len(ids)), "amin")
    return values, torch.arange(len(ids)) == first_index[inverse]
