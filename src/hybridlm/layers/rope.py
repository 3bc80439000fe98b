"""Rotary position embedding (Su et al. 2021), rotate-half layout, optionally partial.

Shapes: x (B, H, N, D), positions (B, N) -> (B, H, N, D); `rotations` computes cos/sin once per call.
Only the first `rotary_dim` features rotate (RecurrentGemma: D/2); the rest pass through.
Positions are per row so that left-padded prompts start at position 0.
"""

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, theta: float = 10000.0, fraction: float = 1.0):
        super().__init__()
        self.rotary_dim = 2 * int(head_dim * fraction // 2)
        inv_freq = 1.0 / (theta ** (torch.arange(0, self.rotary_dim, 2, dtype=torch.float32) / self.rotary_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def rotations(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin (B, 1, N, rotary_dim) of the positions (B, N); shared by queries and keys."""
        angles = positions.unsqueeze(-1).float() * self.inv_freq  # (B, N, rotary_dim/2)
        angles = torch.cat([angles, angles], -1).unsqueeze(1)
        return angles.cos(), angles.sin()

    def forward(self, x: torch.Tensor, rotations: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Rotate x (B, H, N, D) by `rotations` from `self.rotations(positions)`."""
        cos, sin = rotations
        rotary, passthrough = x[..., : self.rotary_dim], x[..., self.rotary_dim :]
        half = self.rotary_dim // 2
        rotated_half = torch.cat([-rotary[..., half:], rotary[..., :half]], dim=-1)
        rotary = (rotary.float() * cos + rotated_half.float() * sin).to(x.dtype)
        return torch.cat([rotary, passthrough], dim=-1)
