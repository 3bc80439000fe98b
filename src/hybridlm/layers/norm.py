"""RMSNorm (Zhang & Sennrich 2019): y = x / sqrt(mean(x^2) + eps) * w, computed in fp32.

Shapes: x (..., d) -> (..., d).
`offset=True` gives the Gemma / RecurrentGemma variant y = x_hat * (1 + w) (weight initialised to 0).
"""

import torch
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5, offset: bool = False):
        super().__init__()
        self.eps = eps
        self.offset = offset
        self.weight = nn.Parameter(torch.zeros(dim) if offset else torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_hat = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        weight = (1.0 + self.weight.float()) if self.offset else self.weight.float()
        return (x_hat * weight).to(x.dtype)

    def reset_special_parameters(self) -> None:
        nn.init.zeros_(self.weight) if self.offset else nn.init.ones_(self.weight)
