"""Mixing operators: a mixer's sequence mixing written as y = M x, one N x N matrix per head or channel.

Glossary: N tokens, d model width, G groups (heads or channels), P features per group.

Each family's `mixing_operators(x, ctx)` returns `MixingOperator`s holding the sequence its matrices
multiply (`values`, (G, N, P)) and a `readout` taking the mixed sequence (G, N, P) to the sub-layer's
output (skips, gates and output projections), so readout(M values) equals the mixer's own output.
Matrices are built in float64 from the module's own weights, a slice of groups at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

ELEMENTS_PER_CHUNK = 2**24  # float64 elements materialised at once while building matrices


@dataclass
class MixingOperator:
    kind: str
    group_name: str  # "head" or "channel"
    values: torch.Tensor  # (G, N, P)
    build: Callable[[slice], torch.Tensor]  # groups -> (g, N, N) float64
    readout: Callable[[torch.Tensor], torch.Tensor]  # (G, N, P) -> (1, N, d)
    chunk: int = 1  # groups per call of `build` that fit ELEMENTS_PER_CHUNK

    @property
    def n_groups(self) -> int:
        return self.values.shape[0]

    def matrix(self, groups: slice = slice(None)) -> torch.Tensor:
        """(g, N, N) mixing matrices of the chosen groups."""
        return self.build(groups)

    def _chunks(self):
        for start in range(0, self.n_groups, self.chunk):
            yield slice(start, min(start + self.chunk, self.n_groups))

    def mixed(self) -> torch.Tensor:
        """M values, (G, N, P) float64, built chunk by chunk."""
        return torch.cat([self.build(part) @ self.values[part].double() for part in self._chunks()])

    def reduced(self, group: int | None = None) -> torch.Tensor:
        """(N, N): one group's matrix, or the mean over groups (computed without holding them all)."""
        if group is not None:
            if not 0 <= group < self.n_groups:
                raise ValueError(f"{self.kind} has {self.n_groups} {self.group_name}s; got {group}")
            return self.build(slice(group, group + 1))[0]
        return sum(self.build(part).sum(0) for part in self._chunks()) / self.n_groups


def chunk_groups(length: int, per_group_factor: int = 1) -> int:
    """Groups whose (N, N, factor) float64 matrices fit ELEMENTS_PER_CHUNK."""
    return max(1, ELEMENTS_PER_CHUNK // (length * length * per_group_factor))


def lower_triangle(length: int, device) -> torch.Tensor:
    return torch.tril(torch.ones(length, length, dtype=torch.bool, device=device))


def segment_sums(cumulative: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """cumulative (N, g) -> (g, N, N) with [t, s] = cum[t] - cum[s] on and below the diagonal, 0 above."""
    seg = cumulative.T.unsqueeze(-1) - cumulative.T.unsqueeze(-2)
    return torch.where(lower, seg, torch.zeros((), dtype=seg.dtype, device=seg.device))
