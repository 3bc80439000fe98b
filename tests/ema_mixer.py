"""A mixer family defined outside the package (docs/adding-a-mixer.md's example): a per-channel
exponential moving average, pattern character `Y`.

Glossary: B batch, N tokens, d model width.

    v_t = W_in x_t                     (B, N, d)
    h_t = a o h_{t-1} + (1 - a) o v_t  a = sigmoid(decay_logit) in (0, 1), one per channel
    y_t = W_out h_t

It is linear in x, so its mixing matrix M_c[t, s] = (1 - a_c) a_c^(t - s) is its Jacobian along
the sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import hybridlm
from hybridlm.cache import State
from hybridlm.errors import ConfigError
from hybridlm.layers import CacheBytes, Decay, Flops, Mixer, MixingOperator, no_weight_decay
from hybridlm.layers.base import FP32_BYTES, linear_flops


@dataclass
class EMAConfig:
    decay_min: float = 0.5  # a is initialised uniformly in [decay_min, decay_max]
    decay_max: float = 0.99

    def validate(self, model, chars: str) -> None:
        if not 0.0 < self.decay_min <= self.decay_max < 1.0:
            raise ConfigError(f"ema.decay_min={self.decay_min}, decay_max={self.decay_max}: need 0 < min <= max < 1")


@dataclass
class EMAState(State):
    h: torch.Tensor  # (B, d) fp32


class EMA(Mixer):
    chars = {"Y": "ema"}
    config_name = "ema"
    Config = EMAConfig

    def __init__(self, d_model: int, options: EMAConfig):
        super().__init__()
        self.options, self.d_model = options, d_model
        self.in_proj = nn.Linear(d_model, d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        self.out_proj.residual_output = True  # scaled by 1/sqrt(#sub-layers) at init, as other outputs
        self.decay_logit = nn.Parameter(torch.empty(d_model))
        no_weight_decay(self.decay_logit)
        self.reset_special_parameters()

    @classmethod
    def from_config(cls, config, char: str = "Y", ordinal: int = 0) -> EMA:
        return cls(config.d_model, config.ema)

    def reset_special_parameters(self) -> None:
        with torch.no_grad():
            decay = torch.empty(self.d_model).uniform_(self.options.decay_min, self.options.decay_max)
            self.decay_logit.copy_(torch.logit(decay))

    def allocate_state(self, batch_size: int, max_len, device, dtype) -> EMAState:
        return EMAState(h=torch.zeros(batch_size, self.d_model, device=device, dtype=torch.float32))

    def forward(self, x: torch.Tensor, state: EMAState | None, ctx) -> torch.Tensor:
        """x (B, N, d) -> (B, N, d); updates state.h in place."""
        decay = torch.sigmoid(self.decay_logit).to(x.dtype)
        v = ctx.zero_padding(self.in_proj(x)) * (1 - decay)  # padding adds nothing to h
        h = x.new_zeros(x.shape[0], self.d_model) if state is None else state.h.to(x.dtype)
        states = []
        for t in range(x.shape[1]):
            h = decay * h + v[:, t]
            states.append(h)
        if state is not None:
            state.h.copy_(h)
        return self.out_proj(torch.stack(states, dim=1))

    def flops(self, seq_len: int) -> Flops:
        """Two d x d linears per token; the update a h + v' (2) and (1 - a) v (1): 3 d per token."""
        per_token = 3 * self.d_model
        return Flops(linear_flops(self.in_proj) + linear_flops(self.out_proj), per_token * seq_len, per_token)

    def cache_bytes(self, seq_len: int, batch: int, dtype_bytes: int) -> CacheBytes:
        return CacheBytes(state=batch * self.d_model * FP32_BYTES, simplified=batch * self.d_model * dtype_bytes)

    def mixing_operators(self, x: torch.Tensor, ctx) -> list[MixingOperator]:
        """M_c[t, s] = (1 - a_c) a_c^(t - s) for s <= t, on the values W_in x."""
        length = x.shape[1]
        log_decay = torch.nn.functional.logsigmoid(self.decay_logit.double())  # (d,)
        lags = torch.arange(length, device=x.device)
        lag = (lags.unsqueeze(1) - lags.unsqueeze(0)).double()  # (N, N) t - s
        values = ctx.zero_padding(self.in_proj(x))[0].T.unsqueeze(-1)  # (d, N, 1)

        def build(groups):
            matrix = (
                torch.exp(log_decay[groups, None, None] * lag.clamp(min=0))
                * (1 - log_decay[groups].exp())[:, None, None]
            )
            return matrix.masked_fill(lag < 0, 0.0)

        def readout(mixed):
            return self.out_proj(mixed[..., 0].T.unsqueeze(0).to(x.dtype))

        return [MixingOperator("ema", "channel", values, build, readout, chunk=self.d_model)]

    def decay_rates(self, x: torch.Tensor, ctx) -> Decay:
        """-log a per channel, input-independent."""
        return Decay("channel", -torch.nn.functional.logsigmoid(self.decay_logit.double()), "ema")


hybridlm.register_mixer(EMA)
