"""Memory length of SSM layers: how many tokens it takes a state element to forget half of itself.

On a given input, a state element decays per token by exp(log_decay_t); over T tokens by
exp(sum_t log_decay_t), so its effective per-token rate is the mean of -log_decay_t and its
half-life is ln 2 / that rate, in tokens:

    Mamba:    -log A_bar = dt_t[c] * |A[c, n]|     one half-life per (channel, state)
    Mamba-2:  -log A_bar = dt_t[h] * |A_h|         one per head
    RG-LRU:   -log a_t   = c * r_t[c] * softplus(-Lambda[c])   one per channel (first token skipped:
              it resets the state)
    Hyena:    -log |p|   = softplus(rho)           one per (channel, mode); input-independent
The alpha-blend reports its SSM half. Attention has no decay (its memory is the window or N).
Each family computes its own rates (its `decay_rates` hook, layers/base.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..model import HybridLM
from .probe import record_sublayers

LN2 = math.log(2.0)


@dataclass
class LayerMemory:
    index: int
    char: str
    kind: str
    unit: str  # what one half-life belongs to
    half_lives: torch.Tensor  # (K,) float64, in tokens

    def quantiles(self) -> dict:
        """min, 10%, median, 90% and max half-life, in tokens."""
        values = self.half_lives.double()
        points = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
        return dict(zip(("min", "p10", "median", "p90", "max"), torch.quantile(values, points).tolist()))


def memory_lengths(model: HybridLM, input_ids: torch.Tensor, row: int = 0) -> list[LayerMemory]:
    """Half-lives of every SSM-type sub-layer's state elements on row `row` of input_ids (B, N)."""
    rows = []
    with torch.no_grad():
        for call in record_sublayers(model, input_ids, row):
            decay = call.module.decay_rates(call.x, call.ctx)  # each family's hook; None: no decaying state
            if decay is not None:
                rows.append(LayerMemory(call.index, call.char, decay.kind, decay.unit, LN2 / decay.rates))
    return rows
