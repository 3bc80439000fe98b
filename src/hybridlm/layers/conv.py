"""Depthwise causal 1-D convolution with a rolling state, as used in Mamba, Griffin and Hyena.

Glossary: B batch, L new tokens, C channels, K kernel width.
The state holds the last K - 1 inputs, so decoding one token at a time, prefilling in chunks, and
one full pass give the same outputs.
"""

import torch
from torch import nn

from ..ops.dispatch import causal_conv1d


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

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None, silu: bool = False):
        """x (B, L, C), state (B, C, K-1) or None (zeros) -> y (B, L, C) (SiLU'd if `silu`), new state.

        Runs the fastest available kernel (ops/dispatch.py); ops/causal_conv.py is the reference."""
        return causal_conv1d(x, self.weight, self.bias, state, silu)
