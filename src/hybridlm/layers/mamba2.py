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

import torch
import torch.nn.functional as F
from torch import nn

from ..cache import LayerState
from ..ops.dispatch import ssd
from .context import Context
from .conv import CausalConv1d


class GatedRMSNorm(nn.Module):
    """RMSNorm_g(y * SiLU(z)): normalised per group of d_in / g channels (norm_before_gate=False)."""

    def __init__(self, dim: int, n_groups: int, eps: float):
        super().__init__()
        self.n_groups, self.eps = n_groups, eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        gated = (y.float() * F.silu(z.float())).unflatten(-1, (self.n_groups, -1))
        normed = gated * torch.rsqrt(gated.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed.flatten(-2) * self.weight.float()).to(y.dtype)

    def reset_special_parameters(self) -> None:
        nn.init.ones_(self.weight)


class Mamba2(nn.Module):
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
        self.reset_special_parameters()

    @classmethod
    def from_config(cls, config, char: str = "D", ordinal: int = 0) -> Mamba2:
        return cls(config.d_model, config.mamba2)

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

    def allocate_state(self, batch_size: int, max_len, device, dtype) -> LayerState:
        options = self.options
        return LayerState(
            conv=torch.zeros(batch_size, self.conv_dim, options.d_conv - 1, device=device, dtype=dtype),
            ssm=torch.zeros(
                batch_size, self.n_heads, options.head_dim, options.d_state, device=device, dtype=torch.float32
            ),
        )

    def forward(self, u: torch.Tensor, state: LayerState | None, ctx: Context) -> torch.Tensor:
        """u (b, l, d) -> (b, l, d); updates `state` (conv, ssm) in place when given."""
        batch, length, _ = u.shape
        options = self.options
        z, xBC, dt = self.in_proj(u).split([self.d_inner, self.conv_dim, self.n_heads], dim=-1)
        xBC, conv_state = self.conv(ctx.zero_padding(xBC), None if state is None else state.conv, silu=True)
        xBC = ctx.zero_padding(xBC)
        x, B, C = xBC.split([self.d_inner, options.n_groups * options.d_state, options.n_groups * options.d_state], -1)
        dt = F.softplus(dt.float() + self.dt_bias.float()).clamp(*options.dt_limit)  # (b, l, h)
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
