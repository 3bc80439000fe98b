"""What every sub-layer receives besides its input: token positions, padding, and model-level inputs.

Glossary: B batch, N new tokens, d model width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Context:
    positions: torch.Tensor  # (B, N) position of each new token in its own row; -1 marks padding
    valid: torch.Tensor | None = None  # (B, N) True for real tokens; None: no padding
    embeddings: torch.Tensor | None = None  # (B, N, d) the token embeddings, input of the shared block
    shared: dict | None = None  # {attribute: module} weights the model holds once (`Mixer.shared_modules`)

    def zero_padding(self, x: torch.Tensor) -> torch.Tensor:
        """Zero x (B, N, ...) at padding positions so nothing of a pad reaches a state."""
        if self.valid is None:
            return x
        mask = self.valid.view(*self.valid.shape, *([1] * (x.dim() - 2)))
        return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
