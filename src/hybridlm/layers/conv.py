"""Depthwise causal 1-D convolution with a rolling state, as used in Mamba, Griffin and Hyena.

Glossary: B batch, L new tokens, C channels, K kernel width.
The state holds the last K - 1 inputs, so decoding one token at a time, prefilling in chunks, and
one full pass give the same outputs.
"""

import torch
import torch.nn.functional as F
from torch import nn


class CausalConv1d(nn.Module):
    """y_t[c] = b[c] + sum_{j<K} w[c, j] * x_{t-K+1+j}[c]; weight (C, 1, K) as in torch/HF."""

    def __init__(self, channels: int, kernel_size: int, bias: bool = True):
        super().__init__()
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None
        self.reset_special_parameters()

    def reset_special_parameters(self) -> None:
        # torch's Conv1d default: uniform(+-1/sqrt(fan_in)), fan_in = K for a depthwise conv
        bound = self.kernel_size**-0.5
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, L, C), state (B, C, K-1) or None (zeros) -> y (B, L, C), new state (B, C, K-1)."""
        x_t = x.transpose(1, 2)  # (B, C, L)
        if state is None:
            state = x_t.new_zeros(x_t.shape[0], x_t.shape[1], self.kernel_size - 1)
        window = torch.cat([state.to(x_t.dtype), x_t], dim=2)  # (B, C, K-1+L)
        y = F.conv1d(window, self.weight, self.bias, groups=x_t.shape[1])  # (B, C, L)
        new_state = window[:, :, window.shape[2] - (self.kernel_size - 1) :]
        return y.transpose(1, 2), new_state
