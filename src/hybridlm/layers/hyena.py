"""Hyena operator of order 2 (`H`) with a modal long filter (Poli et al. 2023; StripedHyena 2023).

Glossary: b batch, l new tokens, d model width, m modes (complex poles) per channel, k short conv.

    [q, k, v] = short_conv(in_proj(u))          (b, l, 3d), depthwise causal conv of width k
    z         = h * (k o v) + D o (k o v)       long causal convolution, one filter per channel
    out       = out_proj(q o z)                 (Hyena eq. 3 with N = 2: two gates)

The long filter is modal: h_t = Re sum_m R_m p_m^t with p_m = exp(-softplus(rho) + i theta), so |p| < 1.
Prefill and training use the FFT (O(l log l)); decoding runs the equivalent diagonal complex
recurrence s_t = p s_{t-1} + (k o v)_t with a fixed state of d * m complex numbers.
Departure from StripedHyena: poles and residues are trained directly (no distillation from an
implicit filter), and chunked prefill adds the carried-in state's response exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..cache import LayerState
from ..ops.dispatch import modal_recurrence
from ..ops.fftconv import fft_causal_conv, modal_filter, modal_prefill_state, modal_state_response
from .context import Context
from .conv import CausalConv1d


class Hyena(nn.Module):
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
        self.reset_special_parameters()

    @classmethod
    def from_config(cls, config, char: str = "H", ordinal: int = 0) -> Hyena:
        return cls(config.d_model, config.hyena)

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

    def allocate_state(self, batch_size: int, max_len, device, dtype) -> LayerState:
        return LayerState(
            conv=torch.zeros(batch_size, 3 * self.d_model, self.options.short_conv - 1, device=device, dtype=dtype),
            modal=torch.zeros(batch_size, self.d_model, self.options.n_modes, device=device, dtype=torch.complex64),
        )

    def forward(self, u: torch.Tensor, state: LayerState | None, ctx: Context) -> torch.Tensor:
        """u (b, l, d) -> (b, l, d); one-token steps use the recurrence, longer inputs the FFT."""
        qkv, conv_state = self.short_conv(ctx.zero_padding(self.in_proj(u)), None if state is None else state.conv)
        q, k, v = qkv.chunk(3, dim=-1)
        gated = ctx.zero_padding(k * v)  # (b, l, d), the long convolution's input
        log_radius, angle = self.poles()
        residue = torch.view_as_complex(self.residue.float())
        if state is not None and u.shape[1] == 1:
            poles = torch.exp(torch.complex(log_radius, angle))
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
