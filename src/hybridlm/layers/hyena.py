"""Hyena operator of order 2 (`H`) with a modal long filter (Poli et al. 2023; StripedHyena 2023).

Glossary: b batch, l new tokens, d model width, m modes (complex poles) per channel, k short conv.

    [q, k, v] = short_conv(in_proj(u))          (b, l, 3d), depthwise causal conv of width k
    z         = h * (k o v) + D o (k o v)       long causal convolution, one filter per channel
    out       = out_proj(q o z)                 (Hyena eq. 3 with N = 2: two gates)

The long filter is modal: h_t = Re sum_m R_m p_m^t with p_m = exp(-softplus(rho) + i theta), so |p| < 1.
Prefill and training use the FFT (O(l log l)); decoding runs the equivalent diagonal complex
recurrence s_t = p s_{t-1} + (k o v)_t with a fixed state of d * m complex numbers, complex128 so
that decoding stays within 1e-5 of the FFT form at 16K tokens for |p| up to 0.9999 (the filter
and pole powers are computed in float64 on both sides: `ops/fftconv.py`, "Precision").
Departure from StripedHyena: poles and residues are trained directly (no distillation from an
implicit filter), and chunked prefill adds the carried-in state's response exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..cache import State
from ..ops.dispatch import modal_recurrence
from ..ops.fftconv import STATE_DTYPE as MODAL_STATE_DTYPE
from ..ops.fftconv import fft_causal_conv, modal_filter, modal_poles, modal_prefill_state, modal_state_response
from .base import (
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
from .mixing import MixingOperator, chunk_groups


@dataclass
class HyenaConfig:
    """Hyena order-2 operator (`H`) with a modal long filter h_t = Re sum_n R_n p_n^t (StripedHyena)."""

    short_conv: int = 3
    n_modes: int = 4  # complex poles per channel
    decay_min: float = 0.5  # initial |p| spread in [decay_min, decay_max]
    decay_max: float = 0.999
    proj_bias: bool = True

    def validate(self, model, chars: str) -> None:
        check_positive(self, "hyena.", ("short_conv", "n_modes"))
        require(
            0.0 < self.decay_min <= self.decay_max < 1.0,
            f"hyena.decay_min={self.decay_min}, decay_max={self.decay_max}: need 0 < decay_min <= decay_max < 1",
        )


@dataclass
class HyenaState(State):
    conv: torch.Tensor  # (b, 3d, k - 1) in the activation dtype
    modal: torch.Tensor  # (b, d, m) complex128 (MODAL_STATE_DTYPE)


class Hyena(Mixer):
    chars = {"H": "hyena"}
    config_name = "hyena"
    Config = HyenaConfig

    def __init__(self, d_model: int, options):
        super().__init__()
        self.options, self.d_model = options, d_model
        self.in_proj = nn.Linear(d_model, 3 * d_model, bias=options.proj_bias)
        self.short_conv = CausalConv1d(3 * d_model, options.short_conv, bias=True)
        self.pole_rho = nn.Parameter(torch.empty(d_model, options.n_modes))  # |p| = exp(-softplus(rho))
        self.pole_theta = nn.Parameter(torch.empty(d_model, options.n_modes))
        self.residue = nn.Parameter(torch.empty(d_model, options.n_modes, 2))  # (real, imag)
        self.D = nn.Parameter(torch.empty(d_model))
        self.out_proj = nn.Linear(d_model, d_model, bias=options.proj_bias)
        self.out_proj.residual_output = True
        no_weight_decay(self.pole_rho, self.pole_theta, self.residue, self.D)
        self.reset_special_parameters()

    @classmethod
    def from_config(cls, config, char: str = "H", ordinal: int = 0) -> Hyena:
        return cls(config.d_model, config.hyena)

    @classmethod
    def describe_options(cls, config) -> str:
        return f"hyena modes={config.hyena.n_modes}"

    def reset_special_parameters(self) -> None:
        """Radii spread over [decay_min, decay_max] per channel (short to long memory), angles in [0, pi)."""
        options = self.options
        with torch.no_grad():
            radius = torch.empty(self.d_model, options.n_modes).uniform_(options.decay_min, options.decay_max)
            neg_log_radius = -torch.log(radius)
            self.pole_rho.copy_(neg_log_radius + torch.log(-torch.expm1(-neg_log_radius)))
            self.pole_theta.uniform_(0.0, math.pi)
            nn.init.normal_(self.residue, std=options.n_modes**-0.5)
            self.D.fill_(1.0)

    def poles(self) -> tuple[torch.Tensor, torch.Tensor]:
        """log |p| (d, m) and arg p (d, m)."""
        return -F.softplus(self.pole_rho.float()), self.pole_theta.float()

    def filter(self, length: int) -> torch.Tensor:
        """The long filter h (d, length), as the FFT path uses it."""
        log_radius, angle = self.poles()
        return modal_filter(log_radius, angle, torch.view_as_complex(self.residue.float()), length)

    def allocate_state(self, batch_size: int, max_len, device, dtype) -> HyenaState:
        return HyenaState(
            conv=torch.zeros(batch_size, 3 * self.d_model, self.options.short_conv - 1, device=device, dtype=dtype),
            modal=torch.zeros(batch_size, self.d_model, self.options.n_modes, device=device, dtype=MODAL_STATE_DTYPE),
        )

    def forward(self, u: torch.Tensor, state: HyenaState | None, ctx: Context) -> torch.Tensor:
        """u (b, l, d) -> (b, l, d); one-token steps use the recurrence, longer inputs the FFT."""
        q, gated, conv_state = self.gates(u, ctx, None if state is None else state.conv)
        log_radius, angle = self.poles()
        residue = torch.view_as_complex(self.residue.float())
        if state is not None and u.shape[1] == 1:
            poles = modal_poles(log_radius, angle)
            z, modal_state = modal_recurrence(gated, poles, residue, state.modal)
        else:
            z = fft_causal_conv(gated, modal_filter(log_radius, angle, residue, u.shape[1]))
            if state is not None:
                z = z + modal_state_response(state.modal, log_radius, angle, residue, u.shape[1]).to(z.dtype)
                modal_state = modal_prefill_state(gated, log_radius, angle, state.modal)
        if state is not None:  # in place: the cache's tensors are allocated once
            state.conv.copy_(conv_state)
            state.modal.copy_(modal_state)
        z = z + self.D * gated
        return self.out_proj(q * z)

    def decode_program_step(self, norm, state: HyenaState | None, batch: int, shared: dict):
        """This sub-layer's step in a whole-step decode (ops/decode_program.py, ops/hyena_step_cpu.py), or None."""
        if state is None or norm is None:
            return None
        from ..ops import hyena_step_cpu

        return hyena_step_cpu.program_step(self, norm, state)

    def gates(self, u: torch.Tensor, ctx: Context, conv_state: torch.Tensor | None = None):
        """q (b, l, d), the long convolution's input k o v (b, l, d), and the short conv's new state."""
        qkv, conv_state = self.short_conv(ctx.zero_padding(self.in_proj(u)), conv_state)
        q, k, v = qkv.chunk(3, dim=-1)
        return q, ctx.zero_padding(k * v), conv_state

    def flops(self, seq_len: int) -> Flops:
        """Dense: in/out projections and the short conv. Prefill: FFT convolution zero-padded to 2N
        (hyena_fft_flops); decode: the modal recurrence, complex p * s (6), + u (1), Re(R s) (3),
        sum (1) per mode, and the skip: 11 d m + 2 d."""
        dense = linear_flops(self.in_proj) + conv_flops(self.short_conv) + linear_flops(self.out_proj)
        d, modes = self.d_model, self.options.n_modes
        return Flops(dense, hyena_fft_flops(d, modes, seq_len), 11 * d * modes + 2 * d)

    def cache_bytes(self, seq_len: int, batch: int, dtype_bytes: int) -> CacheBytes:
        modal = batch * self.d_model * self.options.n_modes * MODAL_STATE_DTYPE.itemsize
        state = conv_state_bytes(self.short_conv, batch, dtype_bytes) + modal
        return CacheBytes(state=state, simplified=batch * self.d_model * dtype_bytes)

    def mixing_operators(self, u: torch.Tensor, ctx: Context) -> list[MixingOperator]:
        """The Toeplitz matrix of each channel's long filter, M_c[t, s] = h_c[t - s] (Hyena eq. 3),
        acting on k o v; q gates the result."""
        q, gated, _ = self.gates(u, ctx)
        length = u.shape[1]
        kernel = self.filter(length).double()  # (d, N)
        lags = torch.arange(length, device=u.device)
        lag = lags.unsqueeze(1) - lags.unsqueeze(0)  # (N, N) t - s
        lower = lag >= 0

        def build(groups):
            return kernel[groups][:, lag.clamp(min=0)].masked_fill(~lower, 0.0)

        def readout(mixed):
            z = mixed[..., 0].T.unsqueeze(0) + self.D.double() * gated.double()
            return self.out_proj(q * z.to(u.dtype))

        return [MixingOperator("hyena", "channel", gated[0].T.unsqueeze(-1), build, readout, chunk_groups(length))]

    def decay_rates(self, u: torch.Tensor, ctx: Context) -> Decay:
        """-log |p| = softplus(rho), one per (channel, mode), input-independent."""
        return Decay("channel x mode", F.softplus(self.pole_rho.double()).flatten(), "hyena")


def hyena_fft_flops(channels: int, n_modes: int, seq_len: int) -> float:
    """FFT long convolution of N tokens zero-padded to 2N: three real FFTs (2.5 * 2N log2 2N each), a
    complex product (6 per frequency, N + 1 of them), the modal filter (9 per (mode, t)), the skip (2)."""
    n_fft = 2 * seq_len
    fft = 2.5 * n_fft * math.log2(n_fft)  # one real FFT (half of the 5 n log2 n of a complex one)
    per_channel = 3 * fft + 6 * (seq_len + 1) + 9 * n_modes * seq_len + 2 * seq_len
    return channels * per_channel
