"""Dense feed-forward sub-layer (`F`): gated (SwiGLU / GeGLU, Shazeer 2020) or plain.

Glossary: B batch, N tokens, d model width, d_ff hidden width.
    gated: y = W_down (act(W_gate x) * W_up x)        plain: y = W_down act(W_up x)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.dispatch import fused_decode_applies
from .base import Flops, TokenwiseMixer, check_positive, linear_flops, require

ACTIVATION_FUNCTIONS = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def check_activation(section: str, activation: str) -> None:
    require(
        activation in ACTIVATION_FUNCTIONS,
        f"{section}.activation={activation!r}: choose one of {', '.join(ACTIVATION_FUNCTIONS)}",
    )


@dataclass
class MLPConfig:
    """Dense MLP (`F`): down(act(gate(x)) * up(x)) when gated."""

    d_ff: int | None = None  # None: 8/3 * d_model rounded up to a multiple of 8 (gated) or 4 * d_model
    activation: str = "silu"
    gated: bool = True
    bias: bool = False

    def width(self, model) -> int:
        """d_ff; the default keeps a gated MLP's parameters at those of a 4d plain one."""
        if self.d_ff:
            return self.d_ff
        if self.gated:
            return 8 * math.ceil(8 * model.d_model / 3 / 8)
        return 4 * model.d_model

    def validate(self, model, chars: str) -> None:
        check_positive(self, "mlp.", ("d_ff",))
        check_activation("mlp", self.activation)


class MLP(TokenwiseMixer):
    chars = {"F": "mlp"}
    config_name = "mlp"
    Config = MLPConfig
    role = "ffn"

    def __init__(self, d_model: int, d_ff: int, activation: str = "silu", gated: bool = True, bias: bool = False):
        super().__init__()
        self.activation, self.activation_name = ACTIVATION_FUNCTIONS[activation], activation
        self.gate_proj = nn.Linear(d_model, d_ff, bias=bias) if gated else None
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)
        self.down_proj.residual_output = True

    @classmethod
    def from_config(cls, config, char: str = "F", ordinal: int = 0) -> MLP:
        options = config.mlp
        return cls(config.d_model, options.width(config), options.activation, options.gated, options.bias)

    def allocate_state(self, batch_size, max_len, device, dtype):
        return None

    def forward(self, x: torch.Tensor, state=None, ctx=None, gate_up_delta: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, d) -> (B, N, d). `gate_up_delta` (B, N, 2 d_ff): a LoRA term added to [gate | up]."""
        if gate_up_delta is None and x.numel() == x.shape[-1] and x.dim() > 1:  # one token (an MoE expert's)
            out = self.decode_token(x.view(1, 1, -1), None)
            if out is not None:
                return out.view(x.shape)
        up = self.up_proj(x)
        if self.gate_proj is None:
            return self.down_proj(self.activation(up))
        gate = self.gate_proj(x)
        if gate_up_delta is not None:
            gate_delta, up_delta = gate_up_delta.chunk(2, dim=-1)
            gate, up = gate + gate_delta, up + up_delta
        return self.down_proj(self.activation(gate) * up)

    def decode_token(self, x: torch.Tensor, norm, state=None, ctx=None) -> torch.Tensor | None:
        """The MLP of norm(x) (norm None: of x) for one token x (b, 1, d) in one fused call, [gate | up]
        read as one GEMV (ops/decode_cpu.py); None where it does not apply (the caller runs forward)."""
        if not fused_decode_applies(x, *([norm] if norm is not None else [])):
            return None
        from ..ops import decode_cpu

        weights = decode_cpu.cached_weights(self, lambda mlp: decode_cpu.mlp_weights(norm, mlp), norm)
        return None if weights is None else decode_cpu.mlp_step(x, weights)

    def decode_program_step(self, norm, state, batch: int, shared: dict):
        """This sub-layer's step in a whole-step decode (ops/decode_program.py), or None."""
        from ..ops import decode_cpu
        from ..ops.decode_program import ProgramStep

        entry = decode_cpu.cached_entry(self, lambda mlp: decode_cpu.mlp_weights(norm, mlp), norm)
        return None if entry is None else ProgramStep("mlp", entry[1], [entry[0]])

    def flops(self, seq_len: int) -> Flops:
        """Its two or three linears per token; nothing along the sequence."""
        linears = [self.up_proj, self.down_proj] + ([self.gate_proj] if self.gate_proj is not None else [])
        return Flops(sum(linear_flops(linear) for linear in linears))
