"""Parallel alpha-blend (`P`): an SSM mixer and attention read the same normed input,

    y = alpha o SSM(x) + (1 - alpha) o Attention(x),   alpha = sigmoid(a), one a per channel.

Glossary: b batch, l new tokens, d model width. Which SSM (`blend.ssm`: M D R H) and which
attention (`blend.attn`: A L) are configuration. Related published designs (Hymba, Falcon-H1)
combine parallel heads with fixed or normalised weights; this form makes the mix learnable and
readable per channel.
"""

from __future__ import annotations

import torch
from torch import nn

from ..cache import LayerState
from .context import Context


class Blend(nn.Module):
    def __init__(self, ssm: nn.Module, attention: nn.Module, d_model: int, alpha_init: float = 0.0):
        super().__init__()
        self.ssm, self.attention = ssm, attention
        self.alpha_init = alpha_init
        self.alpha_logit = nn.Parameter(torch.full((d_model,), alpha_init))

    @classmethod
    def from_config(cls, config, char: str = "P", ordinal: int = 0) -> Blend:
        from . import MIXERS

        ssm = MIXERS[config.blend.ssm].from_config(config, config.blend.ssm, ordinal)
        attention = MIXERS[config.blend.attn].from_config(config, config.blend.attn, ordinal)
        return cls(ssm, attention, config.d_model, config.blend.alpha_init)

    def reset_special_parameters(self) -> None:
        nn.init.constant_(self.alpha_logit, self.alpha_init)

    @property
    def alpha(self) -> torch.Tensor:
        return torch.sigmoid(self.alpha_logit)

    def allocate_state(self, batch_size: int, max_len, device, dtype) -> LayerState:
        return LayerState(
            ssm=self.ssm.allocate_state(batch_size, max_len, device, dtype),
            attention=self.attention.allocate_state(batch_size, max_len, device, dtype),
        )

    def forward(self, x: torch.Tensor, state: LayerState | None, ctx: Context) -> torch.Tensor:
        """x (b, l, d) -> (b, l, d)."""
        ssm_out = self.ssm(x, None if state is None else state.ssm, ctx)
        attention_out = self.attention(x, None if state is None else state.attention, ctx)
        alpha = self.alpha.to(x.dtype)
        return alpha * ssm_out + (1 - alpha) * attention_out
