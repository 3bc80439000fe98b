"""RMSNorm (Zhang & Sennrich 2019): y = x / sqrt(mean(x^2) + eps) * w, computed in fp32.

Shapes: x (..., d) -> (..., d).
`offset=True` gives the Gemma / RecurrentGemma variant y = x_hat * (1 + w) (weight initialised to 0).
"""

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.dispatch import fused_decode_applies


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5, offset: bool = False):
        super().__init__()
        self.eps = eps
        self.offset = offset
        self.weight = nn.Parameter(torch.zeros(dim) if offset else torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3 and fused_decode_applies(x, self):  # one decoded token: one numba call, no aten ops
            from ..ops import decode_cpu

            normed = decode_cpu.rms_norm(x, self)
            if normed is not None:
                return normed
        weight = (1.0 + self.weight) if self.offset else self.weight
        if x.dtype == torch.float32 and weight.dtype == torch.float32:  # one fused op (decode is op-bound)
            return F.rms_norm(x, (x.shape[-1],), weight, self.eps)
        x_hat = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return (x_hat * weight.float()).to(x.dtype)

    def reset_special_parameters(self) -> None:
        nn.init.zeros_(self.weight) if self.offset else nn.init.ones_(self.weight)
