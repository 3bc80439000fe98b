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
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..cache import State
from ..ops.dispatch import fused_decode_applies, mamba_decode_step, selective_scan
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
from .mixing import MixingOperator, chunk_groups, lower_triangle, segment_sums
from .norm import RMSNorm


def _sublayer_entry(mixer, norm, state, step_module) -> tuple | None:
    """(DecodeWeights, views) of a conv + SSM mixer's fused sub-layer (`step_module.sublayer_weights`),
    or None where its states or weights cannot be viewed in place."""
    if state is None or not all(t.dtype == torch.float32 and t.is_contiguous() for t in (state.conv, state.ssm)):
        return None
    from ..ops import decode_cpu

    return decode_cpu.cached_entry(mixer, lambda m: step_module.sublayer_weights(norm, m), norm)


def fused_sublayer_decode(mixer, u: torch.Tensor, norm, state, step_module) -> torch.Tensor | None:
    """A conv + SSM mixer's (Mamba, Mamba-2) `decode_token`: its pre-normed sub-layer for one token
    by `step_module` (its `sublayer_weights` and `_sublayer_step` kernel), states updated in place."""
    if state is None or not fused_decode_applies(u, mixer, norm):
        return None
    entry = _sublayer_entry(mixer, norm, state, step_module)
    if entry is None:
        return None
    from ..ops import decode_cpu

    return decode_cpu.conv_ssm_sublayer(step_module._sublayer_step, u, state.conv, state.ssm, entry[1])


def sublayer_program_step(mixer, norm, state, step_module, kind: str):
    """A conv + SSM mixer's `decode_program_step` (ops/decode_program.py): its fused sub-layer's
    arguments, the states viewed in place; None where it does not apply."""
    entry = _sublayer_entry(mixer, norm, state, step_module)
    if entry is None:
        return None
    from ..ops.decode_program import ProgramStep

    held, (before_conv, before_ssm, projection) = entry
    args = (*before_conv, state.conv.numpy(), *before_ssm, state.ssm.numpy(), *projection)
    return ProgramStep(kind, args, [held], [(state, "conv"), (state, "ssm")])


@dataclass
class MambaConfig:
    """Mamba-1 selective SSM (`M`), Gu & Dao 2023."""

    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None  # None: ceil(d_model / 16)
    dt_min: float = 1e-3
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    proj_bias: bool = False
    n_heads: int = 1  # Zamba runs Mamba-1 as independent heads with their own x_proj/dt_proj
    inner_norms: bool = False  # Jamba: RMSNorm on dt, B and C after x_proj

    def rank(self, model) -> int:
        """dt_rank, by default ceil(d_model / 16)."""
        return self.dt_rank or math.ceil(model.d_model / 16)

    def validate(self, model, chars: str) -> None:
        check_positive(self, "mamba.", ("d_state", "d_conv", "expand", "dt_rank", "n_heads"))
        check_positive(self, "mamba.", ("dt_min", "dt_max", "dt_init_floor"))
        require(self.dt_min <= self.dt_max, f"mamba.dt_min={self.dt_min} must be <= mamba.dt_max={self.dt_max}")
        require(
            (self.expand * model.d_model) % self.n_heads == 0,
            f"mamba.n_heads={self.n_heads} must divide mamba.expand * d_model = {self.expand * model.d_model}",
        )


@dataclass
class ConvSSMState(State):
    """A conv window and an SSM state (Mamba-1 and Mamba-2)."""

    conv: torch.Tensor  # (b, channels, k - 1) in the activation dtype
    ssm: torch.Tensor  # (b, d_in, n) for Mamba-1, (b, h, p, n) for Mamba-2; fp32


class Mamba(Mixer):
    chars = {"M": "mamba"}
    config_name = "mamba"
    Config = MambaConfig

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
        no_weight_decay(self.A_log, self.D, self.dt_proj_bias)
        self.reset_special_parameters()

    @classmethod
    def from_config(cls, config, char: str = "M", ordinal: int = 0) -> Mamba:
        return cls(config.d_model, config.mamba, config.norm_eps)

    @classmethod
    def describe_options(cls, config) -> str:
        options = config.mamba
        return (
            f"mamba N={options.d_state} r={options.rank(config)}"
            + (f" heads={options.n_heads}" if options.n_heads > 1 else "")
            + (" dt/B/C norms" if options.inner_norms else "")
        )

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

    def allocate_state(self, batch_size: int, max_len, device, dtype) -> ConvSSMState:
        return ConvSSMState(
            conv=torch.zeros(batch_size, self.d_inner, self.options.d_conv - 1, device=device, dtype=dtype),
            ssm=torch.zeros(batch_size, self.d_inner, self.options.d_state, device=device, dtype=torch.float32),
        )

    def forward(self, u: torch.Tensor, state: ConvSSMState | None, ctx: Context) -> torch.Tensor:
        """u (b, l, d) -> (b, l, d); updates `state` (conv, ssm) in place when given.

        Left padding is exact: x is zero at padding before and after the conv, so the state stays zero.
        """
        x, z = self.in_proj(u).chunk(2, dim=-1)  # (b, l, d_in) each
        if state is not None and ctx.valid is None:  # decoding one token: a fused kernel when available
            y = mamba_decode_step(x, z, state.conv, state.ssm, self._step_weights())
            if y is not None:
                return self.out_proj(y.to(u.dtype))
        x, dt, B, C, conv_state = self._convolve(x, ctx, None if state is None else state.conv)
        y, ssm_state = selective_scan(  # y * SiLU(z), the gate folded into the scan (ops/dispatch.py)
            x, dt, -torch.exp(self.A_log.float()), B, C, self.D, z, None if state is None else state.ssm
        )
        if state is not None:  # in place: the cache's tensors are allocated once
            state.conv.copy_(conv_state)
            state.ssm.copy_(ssm_state)
        return self.out_proj(y)

    def decode_token(self, u: torch.Tensor, norm, state: ConvSSMState | None, ctx: Context) -> torch.Tensor | None:
        """out_proj(mixer(norm(u))) for one token u (b, 1, d) in one fused call (ops/mamba_step_cpu.py),
        updating `state` in place; None where that kernel does not apply (the caller runs forward)."""
        from ..ops import mamba_step_cpu

        return fused_sublayer_decode(self, u, norm, state, mamba_step_cpu)

    def decode_program_step(self, norm, state: ConvSSMState | None, batch: int, shared: dict):
        """This sub-layer's step in a whole-step decode (ops/decode_program.py), or None."""
        from ..ops import mamba_step_cpu

        return sublayer_program_step(self, norm, state, mamba_step_cpu, "mamba")

    def scan_inputs(self, u: torch.Tensor, ctx: Context, conv_state: torch.Tensor | None = None):
        """Everything up to the scan: x (b, l, d_in) after conv and SiLU, gate z, dt (b, l, d_in), B and C
        (b, l, g, n), and the conv's new state."""
        x, z = self.in_proj(u).chunk(2, dim=-1)  # (b, l, d_in) each
        x, dt, B, C, conv_state = self._convolve(x, ctx, conv_state)
        return x, z, dt, B, C, conv_state

    def _convolve(self, x: torch.Tensor, ctx: Context, conv_state: torch.Tensor | None):
        x, conv_state = self.conv(ctx.zero_padding(x), conv_state, silu=True)
        x = ctx.zero_padding(x)
        dt, B, C = self.ssm_parameters(x)
        return x, dt, B, C, conv_state

    def _step_weights(self) -> dict:
        norms = (self.dt_norm.weight, self.B_norm.weight, self.C_norm.weight) if self.options.inner_norms else None
        return {
            "conv_weight": self.conv.weight,
            "conv_bias": self.conv.bias,
            "x_proj": self.x_proj_weight,
            "dt_proj": self.dt_proj_weight,
            "dt_bias": self.dt_proj_bias,
            "A_log": self.A_log,
            "D": self.D,
            "norm_weights": norms,
            "norm_eps": self.dt_norm.eps if norms else 0.0,
        }

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

    def flops(self, seq_len: int) -> Flops:
        """Dense: in/out projections, conv, x_proj and dt_proj (per head). Mixing per token and
        (channel, state) element: dt * A, exp, times B (3), the update (2), C . h (2); per channel
        dt * x (1) and the skip D x (2): 7 d_in n + 3 d_in."""
        projections = 2 * self.x_proj_weight.numel() + 2 * self.dt_proj_weight.numel()
        dense = linear_flops(self.in_proj) + conv_flops(self.conv) + projections + linear_flops(self.out_proj)
        per_token = 7 * self.d_inner * self.options.d_state + 3 * self.d_inner
        return Flops(dense, per_token * seq_len, per_token)

    def cache_bytes(self, seq_len: int, batch: int, dtype_bytes: int) -> CacheBytes:
        ssm = batch * self.d_inner * self.options.d_state * FP32_BYTES
        simplified = batch * self.out_proj.out_features * dtype_bytes  # d values of state
        return CacheBytes(state=conv_state_bytes(self.conv, batch, dtype_bytes) + ssm, simplified=simplified)

    def mixing_operators(self, u: torch.Tensor, ctx: Context) -> list[MixingOperator]:
        """One semiseparable matrix per channel of d_in (Mamba-2, section 3):
        M_c[t, s] = sum_n C_t[n] exp(A[c, n] sum_{s<u<=t} dt_u[c]) B_s[n] dt_s[c]."""
        x, z, dt, B, C, _ = self.scan_inputs(u, ctx)
        length, channels = x.shape[1], x.shape[2]
        per_group = channels // B.shape[2]
        B_c = B[0].double().repeat_interleave(per_group, dim=1)  # (N, d_in, n)
        C_c = C[0].double().repeat_interleave(per_group, dim=1)
        A = -torch.exp(self.A_log.double())  # (d_in, n)
        dt64 = dt[0].double()  # (N, d_in)
        cumulative, lower = dt64.cumsum(0), lower_triangle(length, x.device)

        def build(groups):
            seg = segment_sums(cumulative[:, groups], lower)  # (g, N, N) sum of dt over (s, t]
            decay = torch.exp(A[groups][:, None, None, :] * seg.unsqueeze(-1))  # (g, N, N, n)
            matrix = torch.einsum("tcn,scn,ctsn->cts", C_c[:, groups], B_c[:, groups], decay)
            return (matrix * dt64[:, groups].T.unsqueeze(1)).masked_fill(~lower, 0.0)

        def readout(mixed):
            y = mixed[..., 0].T.unsqueeze(0) + self.D.double() * x.double()  # (1, N, d_in)
            return self.out_proj((y.to(u.dtype)) * F.silu(z))

        values = x[0].T.unsqueeze(-1)  # (d_in, N, 1)
        return [MixingOperator("mamba", "channel", values, build, readout, chunk_groups(length, B.shape[-1]))]

    def decay_rates(self, u: torch.Tensor, ctx: Context) -> Decay:
        """-log A_bar = dt_t[c] * |A[c, n]|, averaged over tokens: one rate per (channel, state)."""
        _, _, dt, _, _, _ = self.scan_inputs(u, ctx)
        mean_dt = dt[0].double().mean(0)  # (d_in,)
        rates = (mean_dt.unsqueeze(-1) * torch.exp(self.A_log.double())).flatten()
        return Decay("channel x state", rates, "mamba")
