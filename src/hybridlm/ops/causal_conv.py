"""Depthwise causal 1-D convolution with a carried window, plain PyTorch reference.

Glossary: b batch, l new tokens, c channels, k kernel width.

    y_t[c] = bias[c] + sum_{j<k} w[c, j] * x_{t-k+1+j}[c]

where the k - 1 inputs before the first new token come from `state` (zeros at the start of a
sequence), so one pass, chunked prefill and token-by-token decoding agree. Same arithmetic as
`layers.conv.CausalConv1d`, whose (c, 1, k) weight layout it takes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d_ref(x, weight, bias=None, state=None, silu: bool = False):
    """x (b, l, c), weight (c, 1, k), bias (c,), state (b, c, k-1) -> y (b, l, c) (SiLU'd if `silu`)."""
    x_t = x.transpose(1, 2)  # (b, c, l)
    if state is None:
        state = x_t.new_zeros(x_t.shape[0], x_t.shape[1], weight.shape[-1] - 1)
    window = torch.cat([state.to(x_t.dtype), x_t], dim=2)  # (b, c, k-1+l)
    y = F.conv1d(window, weight, bias, groups=x_t.shape[1]).transpose(1, 2)
    return F.silu(y) if silu else y


def conv_state_after(x: torch.Tensor, state: torch.Tensor | None, kernel_size: int) -> torch.Tensor:
    """The last k - 1 inputs (b, c, k-1) after feeding x (b, l, c) on top of `state` (None: zeros)."""
    keep = kernel_size - 1
    x_t = x.transpose(1, 2)
    if x_t.shape[2] >= keep:
        return x_t[:, :, x_t.shape[2] - keep :]
    if state is None:
        state = x_t.new_zeros(x_t.shape[0], x_t.shape[1], keep)
    return torch.cat([state.to(x_t.dtype), x_t], dim=2)[:, :, -keep:] if keep else state
