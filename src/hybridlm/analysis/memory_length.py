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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..model import HybridLM
from .mixing_ops import mamba2_scan_inputs, mamba_scan_inputs, rglru_scan_inputs
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


def decay_rates(char: str, mixer, x, ctx) -> tuple[str, torch.Tensor] | None:
    """(unit, mean per-token decay rates -log decay) of an SSM sub-layer's state elements, None for others."""
    if char == "M":
        _, _, dt, _, _ = mamba_scan_inputs(mixer, x, ctx)
        mean_dt = dt[0].double().mean(0)  # (d_in,)
        return "channel x state", (mean_dt.unsqueeze(-1) * torch.exp(mixer.A_log.double())).flatten()
    if char == "D":
        _, _, dt, _, _ = mamba2_scan_inputs(mixer, x, ctx)
        return "head", dt[0].double().mean(0) * torch.exp(mixer.A_log.double())
    if char == "R":
        _, _, _, log_a, reset = rglru_scan_inputs(mixer, x, ctx)
        kept = ~reset[:, 0]
        if not bool(kept.any()):
            raise ValueError("the RG-LRU resets at the first token: give at least 2 tokens")
        return "channel", -log_a[kept].mean(0)
    if char == "H":
        return "channel x mode", F.softplus(mixer.pole_rho.double()).flatten()
    return None


def memory_lengths(model: HybridLM, input_ids: torch.Tensor, row: int = 0) -> list[LayerMemory]:
    """Half-lives of every SSM-type sub-layer's state elements on row `row` of input_ids (B, N)."""
    rows = []
    with torch.no_grad():
        for call in record_sublayers(model, input_ids, row):
            char, mixer, kind = call.char, call.module, None
            if char == "P":
                char, mixer = model.config.blend.ssm, call.module.ssm
                kind = "blend:"
            rates = decay_rates(char, mixer, call.x, call.ctx)
            if rates is None:
                continue
            unit, rate = rates
            name = {"M": "mamba", "D": "mamba2", "R": "rglru", "H": "hyena"}[char]
            rows.append(LayerMemory(call.index, call.char, (kind or "") + name, unit, LN2 / rate))
    return rows
