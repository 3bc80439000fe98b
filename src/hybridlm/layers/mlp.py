"""Dense feed-forward sub-layer (`F`): gated (SwiGLU / GeGLU, Shazeer 2020) or plain.

Glossary: B batch, N tokens, d model width, d_ff hidden width.
    gated: y = W_down (act(W_gate x) * W_up x)        plain: y = W_down act(W_up x)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATION_FUNCTIONS = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


class MLP(nn.Module):
    def __init__(self, d_model: int, d_ff: int, activation: str = "silu", gated: bool = True, bias: bool = False):
        super().__init__()
        self.activation = ACTIVATION_FUNCTIONS[activation]
        self.gate_proj = nn.Linear(d_model, d_ff, bias=bias) if gated else None
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)
        self.down_proj.residual_output = True

    @classmethod
    def from_config(cls, config, char: str = "F", ordinal: int = 0) -> MLP:
        return cls(config.d_model, config.d_ff, config.mlp.activation, config.mlp.gated, config.mlp.bias)

    def allocate_state(self, batch_size, max_len, device, dtype):
        return None

    def forward(self, x: torch.Tensor, state=None, ctx=None, gate_up_delta: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, d) -> (B, N, d). `gate_up_delta` (B, N, 2 d_ff): a LoRA term added to [gate | up]."""
        up = self.up_proj(x)
        if self.gate_proj is None:
            return self.down_proj(self.activation(up))
        gate = self.gate_proj(x)
        if gate_up_delta is not None:
            gate_delta, up_delta = gate_up_delta.chunk(2, dim=-1)
            gate, up = gate + gate_delta, up + up_delta
        return self.down_proj(self.activation(gate) * up)
