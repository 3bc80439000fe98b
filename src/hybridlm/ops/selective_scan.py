"""Mamba-1 selective scan, plain PyTorch reference (Gu & Dao 2023, Algorithm 2).

Glossary: b batch, l tokens, d channels (d_inner), n state size (d_state), g groups of channels
sharing B and C (1 for Mamba; Zamba's multi-head Mamba uses one group per head).

    A_bar_t = exp(dt_t * A)                     (b, l, d, n)   zero-order hold, eq. 4
    B_bar_t x_t = dt_t * B_t * x_t              (b, l, d, n)   Euler step for B, as the paper's code
    h_t = A_bar_t * h_{t-1} + B_bar_t x_t       (b, d, n)      eq. 2a
    y_t = C_t . h_t + D * x_t                   (b, d)         eq. 2b

The exponentials are computed for all steps up front and the loop walks `unbind()` slices:
indexing `t` inside the loop makes autograd's backward quadratic in l. The state stays fp32.
"""

from __future__ import annotations

import torch


def selective_scan_ref(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x, dt (b, l, d); A (d, n); B, C (b, l, g, n); D (d,); initial_state (b, d, n).

    Returns y (b, l, d) in x's dtype and the final state (b, d, n) in fp32.
    """
    batch, length, channels = x.shape
    groups, d_state = B.shape[2], B.shape[3]
    x32, dt32 = x.float(), dt.float()
    B_per_channel = B.float().repeat_interleave(channels // groups, dim=2)  # (b, l, d, n)
    C_per_channel = C.float().repeat_interleave(channels // groups, dim=2)
    decay = torch.exp(dt32.unsqueeze(-1) * A.float())  # (b, l, d, n)
    drive = (dt32 * x32).unsqueeze(-1) * B_per_channel  # (b, l, d, n)
    h = x.new_zeros(batch, channels, d_state, dtype=torch.float32) if initial_state is None else initial_state.float()
    states = []
    for decay_t, drive_t in zip(decay.unbind(1), drive.unbind(1)):
        h = decay_t * h + drive_t
        states.append(h)
    if not states:
        return x.new_zeros(batch, 0, channels), h
    y = (torch.stack(states, dim=1) * C_per_channel).sum(-1)  # (b, l, d)
    if D is not None:
        y = y + D.float() * x32
    return y.to(x.dtype), h
