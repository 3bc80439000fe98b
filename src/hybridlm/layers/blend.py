"""Parallel alpha-blend (`P`): an SSM mixer and attention read the same normed input,

    y = alpha o SSM(x) + (1 - alpha) o Attention(x),   alpha = sigmoid(a), one a per channel.

Glossary: b batch, l new tokens, d model width. Which SSM (`blend.ssm`: any registered sequence
mixer that is not attention, e.g. M D R H) and which attention (`blend.attn`: A L) are configuration.
Related published designs (Hymba, Falcon-H1) combine parallel heads with fixed or normalised
weights; this form makes the mix learnable and readable per channel. Every hook is the sum (or the
alpha-weighted sum) of its two parts' hooks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..cache import State
from .attention import Attention
from .base import CacheBytes, Decay, Flops, Mixer, no_weight_decay, require
from .context import Context
from .mixing import MixingOperator
from .registry import MIXERS


@dataclass
class BlendConfig:
    """Parallel alpha-blend (`P`): alpha * SSM(x) + (1 - alpha) * Attention(x), alpha per channel."""

    ssm: str = "M"
    attn: str = "A"
    alpha_init: float = 0.0  # logit of alpha; 0 -> alpha = 0.5

    def validate(self, model, chars: str) -> None:
        ssm_chars = blendable_ssm_chars()
        require(self.ssm in ssm_chars, f"blend.ssm must be one of {' '.join(ssm_chars)}, got {self.ssm!r}")
        attention_chars = "".join(Attention.chars)
        require(self.attn in attention_chars, f"blend.attn must be {' or '.join(attention_chars)}, got {self.attn!r}")


def blendable_ssm_chars() -> list[str]:
    """Characters of registered sequence mixers that are neither attention nor shared nor a blend."""
    return [
        char
        for char, family in MIXERS.items()
        if family.role == "mixer"
        and char not in family.attention_chars
        and not family.feeds_next_mixer
        and family.pre_norm
    ]


@dataclass
class BlendState(State):
    ssm: object  # the SSM part's state
    attention: object  # the attention part's KVCache (or ShortConvKVState)


class Blend(Mixer):
    chars = {"P": "blend"}
    config_name = "blend"
    Config = BlendConfig
    attention_chars = "P"

    def __init__(self, ssm: nn.Module, attention: nn.Module, d_model: int, alpha_init: float = 0.0):
        super().__init__()
        self.ssm, self.attention = ssm, attention
        self.alpha_init = alpha_init
        self.alpha_logit = nn.Parameter(torch.full((d_model,), alpha_init))
        no_weight_decay(self.alpha_logit)

    @classmethod
    def from_config(cls, config, char: str = "P", ordinal: int = 0) -> Blend:
        ssm = MIXERS[config.blend.ssm].from_config(config, config.blend.ssm, ordinal)
        attention = MIXERS[config.blend.attn].from_config(config, config.blend.attn, ordinal)
        return cls(ssm, attention, config.d_model, config.blend.alpha_init)

    @classmethod
    def inner_chars(cls, config) -> str:
        return config.blend.ssm + config.blend.attn

    def reset_special_parameters(self) -> None:
        nn.init.constant_(self.alpha_logit, self.alpha_init)

    @property
    def alpha(self) -> torch.Tensor:
        return torch.sigmoid(self.alpha_logit)

    def allocate_state(self, batch_size: int, max_len, device, dtype) -> BlendState:
        return BlendState(
            ssm=self.ssm.allocate_state(batch_size, max_len, device, dtype),
            attention=self.attention.allocate_state(batch_size, max_len, device, dtype),
        )

    def forward(self, x: torch.Tensor, state: BlendState | None, ctx: Context) -> torch.Tensor:
        """x (b, l, d) -> (b, l, d)."""
        ssm_out = self.ssm(x, None if state is None else state.ssm, ctx)
        attention_out = self.attention(x, None if state is None else state.attention, ctx)
        alpha = self.alpha.to(x.dtype)
        return alpha * ssm_out + (1 - alpha) * attention_out

    def decode_program_step(self, norm, state: BlendState | None, batch: int, shared: dict):
        """Both parts' steps in a whole-step decode (ops/decode_program.py), their outputs scaled by alpha
        and 1 - alpha and summed; None unless both parts have one."""
        if state is None or not all(hasattr(part, "decode_program_step") for part in (self.ssm, self.attention)):
            return None
        ssm = self.ssm.decode_program_step(norm, state.ssm, batch, shared)
        attention = self.attention.decode_program_step(norm, state.attention, batch, shared)
        if ssm is None or attention is None:
            return None
        from ..ops.decode_cpu import DecodeWeights
        from ..ops.decode_program import ProgramStep

        with torch.no_grad():
            alpha = self.alpha.float()  # as `forward` mixes them, in float32
            scales = [alpha.numpy(), (1 - alpha).numpy()]
        held = DecodeWeights([self.alpha_logit], derived_from=(self.alpha_logit,))
        return ProgramStep("parts", (), [held], parts=list(zip((ssm, attention), scales)))

    def flops(self, seq_len: int) -> Flops:
        return self.ssm.flops(seq_len) + self.attention.flops(seq_len)

    def cache_bytes(self, seq_len: int, batch: int, dtype_bytes: int) -> CacheBytes:
        return self.ssm.cache_bytes(seq_len, batch, dtype_bytes) + self.attention.cache_bytes(
            seq_len, batch, dtype_bytes
        )

    def mixing_operators(self, x: torch.Tensor, ctx: Context) -> list[MixingOperator]:
        """The two parts' operators, their readouts weighted by alpha and 1 - alpha (they add up to y)."""
        alpha = self.alpha.to(x.dtype)
        operators = []
        for part, weight in ((self.ssm, alpha), (self.attention, 1 - alpha)):
            for operator in part.mixing_operators(x, ctx):
                operator.readout = _weighted(operator.readout, weight)
                operator.kind = f"blend:{operator.kind}"
                operators.append(operator)
        return operators

    def decay_rates(self, x: torch.Tensor, ctx: Context) -> Decay | None:
        """The SSM half's decays (attention has none)."""
        decay = self.ssm.decay_rates(x, ctx)
        if decay is not None:
            decay.kind = f"blend:{decay.kind}"
        return decay


def _weighted(readout, weight):
    return lambda mixed: weight * readout(mixed)
