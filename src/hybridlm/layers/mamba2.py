"""Mamba-2 mixer (`D`): multi-head SSM with a scalar decay per head (Dao & Gu 2024, section 7).

Glossary: b batch, l new tokens, d model width, d_in = expand * d, h heads, p head dim
(d_in = h * p), g groups sharing B and C, n state size, k conv width.

    [z, xBC, dt] = in_proj(u)                       (b, l, d_in + (d_in + 2 g n) + h)
    [x, B, C]    = SiLU(causal_conv(xBC))
    dt           = clamp(softplus(dt + dt_bias), dt_limit)
    y            = SSD(x, dt, A = -exp(A_log), B, C, D)     chunked, ops/ssd.py
    out          = out_proj(RMSNorm_g(y * SiLU(z)))       gated norm over d_in/g channels per group

Departure from mamba_ssm / Hugging Face: dt is clamped in every path; they clamp only in the
chunked path, so their single-token decode can differ when dt < dt_limit[0] (Zamba2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..ops.dispatch import forward_hooked, gated_rms_norm, mamba2_decode_step, ssd, ssd_mixer
from .base import (
    FP32_BYTES,
    CacheBytes,
    Decay,
    Flops,
    Mixer,
    check_positive,
    conv_flops,
    conv_state_bytes,
    linear_flops,
    no_weight_decay,
    require,
)
from .context import Context
from .conv import CausalConv1d
from .mamba import ConvSSMState, fused_sublayer_decode, sublayer_program_step
from .mixing import MixingOperator, chunk_groups, lower_triangle, segment_sums


@dataclass
class Mamba2Config:
    """Mamba-2 / SSD (`D`), Dao & Gu 2024."""

    d_state: int = 64
    d_conv: int = 4
    expand: int = 2
    head_dim: int = 64
    n_groups: int = 1
    chunk_size: int = 64  # 64 is fastest on CPU; the CUDA kernels use 256
    dt_min: float = 1e-3
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_limit: tuple[float, float] = (0.0, math.inf)  # clamp of dt after softplus (Zamba2: (1e-3, inf))
    conv_bias: bool = True
    proj_bias: bool = False
    norm_eps: float = 1e-5  # the gated RMSNorm before out_proj

    def __post_init__(self) -> None:
        try:  # JSON gives a list, an unbounded clamp as the string "inf"
            self.dt_limit = tuple(float(bound) for bound in self.dt_limit)
        except (TypeError, ValueError):
            raise ConfigError(f"mamba2.dt_limit={self.dt_limit!r} must be two numbers (low, high)") from None

    def n_heads(self, model) -> int:
        return self.expand * model.d_model // self.head_dim

    def validate(self, model, chars: str) -> None:
        check_positive(self, "mamba2.", ("d_state", "d_conv", "expand", "head_dim", "n_groups", "chunk_size"))
        check_positive(self, "mamba2.", ("dt_min", "dt_max", "dt_init_floor", "norm_eps"))
        require(self.dt_min <= self.dt_max, f"mamba2.dt_min={self.dt_min} must be <= mamba2.dt_max={self.dt_max}")
        low, high = self.dt_limit
        require(
            len(self.dt_limit) == 2 and 0.0 <= low <= high,
            f"mamba2.dt_limit={self.dt_limit} must be (low, high) with 0 <= low <= high",
        )
        if "D" not in chars:
            return
        d_inner = self.expand * model.d_model
        require(
            d_inner % self.head_dim == 0, f"mamba2.expand * d_model = {d_inner} is not divisible by mamba2.head_dim"
        )
        require(
            (d_inner // self.head_dim) % self.n_groups == 0,
            f"mamba2.n_groups={self.n_groups} must divide the number of Mamba-2 heads ({d_inner // self.head_dim})",
        )


class GatedRMSNorm(nn.Module):
    """RMSNorm_g(y * SiLU(z)): normalised per group of d_in / g channels (norm_before_gate=False)."""

    def __init__(self, dim: int, n_groups: int, eps: float):
        super().__init__()
        self.n_groups, self.eps = n_groups, eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return gated_rms_norm(y, z, self.weight, self.n_groups, self.eps)  # a fused kernel where available

    def reset_special_parameters(self) -> None:
        nn.init.ones_(self.weight)


class Mamba2(Mixer):
    chars = {"D": "mamba2"}
    config_name = "mamba2"
    Config = Mamba2Config

    def __init__(self, d_model: int, options):
        super().__init__()
        self.options = options
        self.d_inner = options.expand * d_model
        self.n_heads = self.d_inner // options.head_dim
        self.conv_dim = self.d_inner + 2 * options.n_groups * options.d_state
        self.in_proj = nn.Linear(d_model, self.d_inner + self.conv_dim + self.n_heads, bias=options.proj_bias)
        self.conv = CausalConv1d(self.conv_dim, options.d_conv, bias=options.conv_bias)
        self.dt_bias = nn.Parameter(torch.empty(self.n_heads))
        self.A_log = nn.Parameter(torch.empty(self.n_heads))
        self.D = nn.Parameter(torch.empty(self.n_heads))
        self.norm = GatedRMSNorm(self.d_inner, options.n_groups, options.norm_eps)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=options.proj_bias)
        self.out_proj.residual_output = True
        no_weight_decay(self.dt_bias, self.A_log, self.D)
        self.reset_special_parameters()

    @classmethod
    def from_config(cls, config, char: str = "D", ordinal: int = 0) -> Mamba2:
        return cls(config.d_model, config.mamba2)

    @classmethod
    def describe_options(cls, config) -> str:
        return f"mamba2 N={config.mamba2.d_state} P={config.mamba2.head_dim}"

    def reset_special_parameters(self) -> None:
        """mamba_ssm's init: A uniform in [1, 16] per head, dt log-uniform in [dt_min, dt_max], D = 1."""
        options = self.options
        with torch.no_grad():
            dt = torch.exp(
                torch.rand(self.n_heads) * (math.log(options.dt_max) - math.log(options.dt_min))
                + math.log(options.dt_min)
            ).clamp(min=options.dt_init_floor)
            self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            self.A_log.copy_(torch.log(torch.empty(self.n_heads).uniform_(1, 16)))
            self.D.fill_(1.0)

    def allocate_state(self, batch_size: int, max_len, device, dtype) -> ConvSSMState:
        options = self.options
        return ConvSSMState(
            conv=torch.zeros(batch_size, self.conv_dim, options.d_conv - 1, device=device, dtype=dtype),
            ssm=torch.zeros(
                batch_size, self.n_heads, options.head_dim, options.d_state, device=device, dtype=torch.float32
            ),
        )

    def forward(self, u: torch.Tensor, state: ConvSSMState | None, ctx: Context) -> torch.Tensor:
        """u (b, l, d) -> (b, l, d); updates `state` (conv, ssm) in place when given."""
        batch, length, _ = u.shape
        options = self.options
        projected = self.in_proj(u)
        if state is not None and ctx.valid is None:  # decoding one token: a fused kernel when available
            y = mamba2_decode_step(projected, state.conv, state.ssm, self._step_weights())
            if y is not None:
                return self.out_proj(y.to(u.dtype))
        if state is None and ctx.valid is None and not self._parts_hooked():  # training: one op, one in_proj gradient
            normed = ssd_mixer(projected, self._mixer_weights(), options.n_groups, options.dt_limit, self.norm.eps)
            if normed is not None:
                return self.out_proj(normed.to(u.dtype))
        x, z, dt, B, C, conv_state = self._split_and_convolve(projected, ctx, None if state is None else state.conv)
        y, ssm_state = ssd(
            x.view(batch, length, self.n_heads, options.head_dim),
            dt,
            -torch.exp(self.A_log.float()),
            B.view(batch, length, options.n_groups, options.d_state),
            C.view(batch, length, options.n_groups, options.d_state),
            self.D,
            None if state is None else state.ssm,
            chunk_size=options.chunk_size,
        )
        if state is not None:  # in place: the cache's tensors are allocated once
            state.conv.copy_(conv_state)
            state.ssm.copy_(ssm_state)
        return self.out_proj(self.norm(y.reshape(batch, length, self.d_inner), z))

    def _mixer_weights(self) -> dict:
        return {
            "conv_weight": self.conv.weight,
            "conv_bias": self.conv.bias,
            "dt_bias": self.dt_bias,
            "A_log": self.A_log,
            "D": self.D,
            "norm_weight": self.norm.weight,
        }

    def _parts_hooked(self) -> bool:
        """Hooks on the conv or the norm, or global ones: they must see those modules run (the fused
        op skips them)."""
        return forward_hooked(self.conv, self.norm)

    def decode_token(self, u: torch.Tensor, norm, state: ConvSSMState | None, ctx: Context) -> torch.Tensor | None:
        """out_proj(mixer(norm(u))) for one token u (b, 1, d) in one fused call (ops/mamba2_step_cpu.py),
        updating `state` in place; None where that kernel does not apply (the caller runs forward)."""
        from ..ops import mamba2_step_cpu

        return fused_sublayer_decode(self, u, norm, state, mamba2_step_cpu)

    def decode_program_step(self, norm, state: ConvSSMState | None, batch: int, shared: dict):
        """This sub-layer's step in a whole-step decode (ops/decode_program.py), or None."""
        from ..ops import mamba2_step_cpu

        return sublayer_program_step(self, norm, state, mamba2_step_cpu, "mamba2")

    def _step_weights(self) -> dict:
        return {**self._mixer_weights(), "norm_eps": self.norm.eps, "dt_limit": self.options.dt_limit}

    def scan_inputs(self, u: torch.Tensor, ctx: Context, conv_state: torch.Tensor | None = None):
        """Everything up to the scan: x (b, l, d_in), gate z, dt (b, l, h) after softplus and clamp,
        B and C (b, l, g n), and the conv's new state."""
        return self._split_and_convolve(self.in_proj(u), ctx, conv_state)

    def _split_and_convolve(self, projected: torch.Tensor, ctx: Context, conv_state: torch.Tensor | None):
        options = self.options
        z, xBC, dt = projected.split([self.d_inner, self.conv_dim, self.n_heads], dim=-1)
        xBC, conv_state = self.conv(ctx.zero_padding(xBC), conv_state, silu=True)
        xBC = ctx.zero_padding(xBC)
        state_width = options.n_groups * options.d_state
        x, B, C = xBC.split([self.d_inner, state_width, state_width], dim=-1)
        dt = F.softplus(dt.float() + self.dt_bias.float()).clamp(*options.dt_limit)  # (b, l, h)
        return x, z, dt, B, C, conv_state

    def flops(self, seq_len: int) -> Flops:
        """Dense: in/out projections and the conv. Mixing (recurrent form) per token: one decay per
        head (2 per head), 5 per (channel, state) element, dt x and the skip: 5 d_in n + 3 d_in + 2 h.
        (Chunked SSD prefill trades extra FLOPs for matmuls.)"""
        dense = linear_flops(self.in_proj) + conv_flops(self.conv) + linear_flops(self.out_proj)
        per_token = 5 * self.d_inner * self.options.d_state + 3 * self.d_inner + 2 * self.n_heads
        return Flops(dense, per_token * seq_len, per_token)

    def cache_bytes(self, seq_len: int, batch: int, dtype_bytes: int) -> CacheBytes:
        ssm = batch * self.d_inner * self.options.d_state * FP32_BYTES
        simplified = batch * self.out_proj.out_features * dtype_bytes
        return CacheBytes(state=conv_state_bytes(self.conv, batch, dtype_bytes) + ssm, simplified=simplified)

    def mixing_operators(self, u: torch.Tensor, ctx: Context) -> list[MixingOperator]:
        """One matrix per head (SSD eq. 16): M_h[t, s] = (C_t . B_s) exp(A_h sum_{s<u<=t} dt_u[h]) dt_s[h]."""
        options = self.options
        length = u.shape[1]
        x, z, dt, B, C, _ = self.scan_inputs(u, ctx)
        dt = dt[0].double()  # (N, h)
        per_group = self.n_heads // options.n_groups
        B_h = B[0].double().view(length, options.n_groups, -1).repeat_interleave(per_group, dim=1)  # (N, h, n)
        C_h = C[0].double().view(length, options.n_groups, -1).repeat_interleave(per_group, dim=1)
        A = -torch.exp(self.A_log.double())  # (h,)
        cumulative, lower = (dt * A).cumsum(0), lower_triangle(length, u.device)
        x_heads = x[0].view(length, self.n_heads, options.head_dim)  # (N, h, p)

        def build(groups):
            decay = torch.exp(segment_sums(cumulative[:, groups], lower))
            scores = torch.einsum("thn,shn->hts", C_h[:, groups], B_h[:, groups])
            return (scores * decay * dt[:, groups].T.unsqueeze(1)).masked_fill(~lower, 0.0)

        def readout(mixed):
            y = mixed.transpose(0, 1) + self.D.double()[:, None] * x_heads.double()  # (N, h, p)
            return self.out_proj(self.norm(y.reshape(1, length, self.d_inner).to(u.dtype), z))

        return [MixingOperator("mamba2", "head", x_heads.transpose(0, 1), build, readout, chunk_groups(length, 2))]

    def decay_rates(self, u: torch.Tensor, ctx: Context) -> Decay:
        """-log A_bar = dt_t[h] * |A_h|, averaged over tokens: one rate per head."""
        _, _, dt, _, _, _ = self.scan_inputs(u, ctx)
        return Decay("head", dt[0].double().mean(0) * torch.exp(self.A_log.double()), "mamba2")
