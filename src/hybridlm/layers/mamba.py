"""Mamba-1 mixer (`M`): selective SSM block of Gu & Dao 2023 (Figure 3, Algorithm 2).

Glossary (mamba-minimal's names): b batch, l new tokens, d model width, d_in = expand * d,
n state size, r dt rank, k conv width, g heads (1 for Mamba; Zamba runs independent heads).

    [x, z]  = in_proj(u)                          (b, l, 2 d_in)
    x       = SiLU(causal_conv(x))                 depthwise, width k
    [dt_r, B, C] = x_proj(x)                       per head: (b, l, g, r + 2n)
    dt      = softplus(dt_proj(dt_r) + dt_bias)    (b, l, d_in), bias inside the softplus
    y       = selective_scan(x, dt, A = -exp(A_log), B, C, D)
    out     = out_proj(y * SiLU(z))

Options matching Hugging Face: `inner_norms` (Jamba's RMSNorm on dt_r, B and C) and `n_heads`
(Zamba's per-head x_proj / dt_proj). Departure from mamba_ssm: x_proj and dt_proj are stored as
(g, out, in) tensors so that one code path serves both; g = 1 is the usual Mamba.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..cache import LayerState
from ..ops.dispatch import mamba_decode_step, selective_scan
from .context import Context
from .conv import CausalConv1d
from .norm import RMSNorm


class Mamba(nn.Module):
    def __init__(self, d_model: int, options, norm_eps: float = 1e-5):
        super().__init__()
        self.options = options
        self.d_inner = options.expand * d_model
        self.n_heads = options.n_heads
        self.dt_rank = options.dt_rank or math.ceil(d_model / 16)
        n, r, head_width = options.d_state, self.dt_rank, self.d_inner // options.n_heads
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=options.proj_bias)
        self.conv = CausalConv1d(self.d_inner, options.d_conv, bias=options.conv_bias)
        self.x_proj_weight = nn.Parameter(torch.empty(self.n_heads, r + 2 * n, head_width))
        self.dt_proj_weight = nn.Parameter(torch.empty(self.n_heads, head_width, r))
        self.dt_proj_bias = nn.Parameter(torch.empty(self.n_heads, head_width))
        self.A_log = nn.Parameter(torch.empty(self.d_inner, n))
        self.D = nn.Parameter(torch.empty(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=options.proj_bias)
        self.out_proj.residual_output = True
        if options.inner_norms:
            self.dt_norm, self.B_norm, self.C_norm = RMSNorm(r, norm_eps), RMSNorm(n, norm_eps), RMSNorm(n, norm_eps)
        self.reset_special_parameters()

    @classmethod
    def from_config(cls, config, char: str = "M", ordinal: int = 0) -> Mamba:
        return cls(config.d_model, config.mamba, config.norm_eps)

    def reset_special_parameters(self) -> None:
        """Mamba's init: S4D-real A = -(1..n), dt in [dt_min, dt_max] log-uniform, D = 1."""
        options, head_width = self.options, self.d_inner // self.n_heads
        with torch.no_grad():
            nn.init.uniform_(self.x_proj_weight, -(head_width**-0.5), head_width**-0.5)
            nn.init.uniform_(self.dt_proj_weight, -(self.dt_rank**-0.5), self.dt_rank**-0.5)
            dt = torch.exp(
                torch.rand(self.n_heads, head_width) * (math.log(options.dt_max) - math.log(options.dt_min))
                + math.log(options.dt_min)
            ).clamp(min=options.dt_init_floor)
            self.dt_proj_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
            self.A_log.copy_(
                torch.log(torch.arange(1, options.d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1)
            )
            self.D.fill_(1.0)

    def allocate_state(self, batch_size: int, max_len, device, dtype) -> LayerState:
        return LayerState(
            conv=torch.zeros(batch_size, self.d_inner, self.options.d_conv - 1, device=device, dtype=dtype),
            ssm=torch.zeros(batch_size, self.d_inner, self.options.d_state, device=device, dtype=torch.float32),
        )

    def forward(self, u: torch.Tensor, state: LayerState | None, ctx: Context) -> torch.Tensor:
        """u (b, l, d) -> (b, l, d); updates `state` (conv, ssm) in place when given.

        Left padding is exact: x is zero at padding before and after the conv, so the state stays zero.
        """
        x, z = self.in_proj(u).chunk(2, dim=-1)  # (b, l, d_in) each
        if state is not None and ctx.valid is None:  # decoding one token: a fused kernel when available
            y = mamba_decode_step(self, x, z, state)
            if y is not None:
                return self.out_proj(y.to(u.dtype))
        x, conv_state = self.conv(ctx.zero_padding(x), None if state is None else state.conv, silu=True)
        x = ctx.zero_padding(x)
        dt, B, C = self.ssm_parameters(x)
        y, ssm_state = selective_scan(  # y * SiLU(z), the gate folded into the scan (ops/dispatch.py)
            x, dt, -torch.exp(self.A_log.float()), B, C, self.D, z, None if state is None else state.ssm
        )
        if state is not None:  # in place: the cache's tensors are allocated once
            state.conv.copy_(conv_state)
            state.ssm.copy_(ssm_state)
        return self.out_proj(y)

    def ssm_parameters(self, x: torch.Tensor):
        """x (b, l, d_in) -> dt (b, l, d_in), B and C (b, l, g, n)."""
        batch, length, _ = x.shape
        n, r = self.options.d_state, self.dt_rank
        x_heads = x.view(batch, length, self.n_heads, -1)  # (b, l, g, d_in/g)
        dt_bc = torch.einsum("blgi,goi->blgo", x_heads, self.x_proj_weight)  # (b, l, g, r + 2n)
        dt_r, B, C = dt_bc.split([r, n, n], dim=-1)
        if self.options.inner_norms:
            dt_r, B, C = self.dt_norm(dt_r), self.B_norm(B), self.C_norm(C)
        dt = torch.einsum("blgr,gir->blgi", dt_r, self.dt_proj_weight)
        dt = F.softplus((dt + self.dt_proj_bias).float()).reshape(batch, length, self.d_inner)
        return dt, B, C
