"""Diagonal linear recurrence h_t = a_t * h_{t-1} + b_t and the RG-LRU built on it, plain references.

Glossary: b batch, l tokens, d channels. The state stays fp32; slices come from `unbind()`.

RG-LRU (De et al. 2024, Griffin eq. 3-4), given the gates r_t, i_t in (0, 1):
    log a_t = r_t * log_a_scale          log_a_scale = -c * softplus(a_param) <= 0, per channel
    h_t     = a_t * h_{t-1} + sqrt(1 - a_t^2) * (i_t * x_t)
At a document start (`reset`) a_t = 0 and the input is not scaled (recurrentgemma, Hugging Face).
"""

from __future__ import annotations

import torch


def linear_scan_ref(a: torch.Tensor, b: torch.Tensor, initial_state: torch.Tensor | None = None):
    """a, b (b, l, d); initial_state (b, d). Returns all states (b, l, d) fp32 and the last (b, d)."""
    h = a.new_zeros(a.shape[0], a.shape[2], dtype=torch.float32) if initial_state is None else initial_state.float()
    states = []
    for a_t, b_t in zip(a.float().unbind(1), b.float().unbind(1)):
        h = a_t * h + b_t
        states.append(h)
    if not states:
        return a.new_zeros(a.shape, dtype=torch.float32), h
    return torch.stack(states, dim=1), h


def rglru_scan_ref(x, gate_i, gate_r, log_a_scale, reset, initial_state=None):
    """x, gate_i, gate_r (b, l, d); log_a_scale (d,); reset (b, l) bool; initial_state (b, d).

    Returns all states (b, l, d) and the last (b, d), fp32."""
    log_a = gate_r.float() * log_a_scale.float()  # (b, l, d)
    a = torch.exp(log_a)
    multiplier = SqrtBoundDerivative.apply(-torch.expm1(2 * log_a))  # 1 - a^2 without losing digits as a -> 1
    reset = reset.unsqueeze(-1)  # document start: forget the past, keep the input whole
    a = torch.where(reset, torch.zeros_like(a), a)
    multiplier = torch.where(reset, torch.ones_like(multiplier), multiplier)
    return linear_scan_ref(a, x.float() * gate_i.float() * multiplier, initial_state)


class SqrtBoundDerivative(torch.autograd.Function):
    """sqrt(x) whose gradient is clipped at `max_gradient` (recurrentgemma: avoids inf at a_t -> 1)."""

    max_gradient = 1000.0

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sqrt(x)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        clipped = torch.clamp(x, min=1.0 / (4 * SqrtBoundDerivative.max_gradient**2))
        return grad_output / (2 * torch.sqrt(clipped))
