"""Diagonal linear recurrence h_t = a_t * h_{t-1} + b_t (RG-LRU, Griffin eq. 4), plain reference.

Glossary: b batch, l tokens, d channels. The state stays fp32; slices come from `unbind()`.
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
