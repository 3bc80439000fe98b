"""Griffin's recurrent block with the RG-LRU (`R`), De et al. 2024, section 2.4 and Figure 2.

Glossary: b batch, l new tokens, d model width, w = D_RNN recurrence width (about 4d/3),
h gate blocks (heads), k conv width, c = 8.

    branch_y = act(linear_y(u))                                  (b, l, w)
    x        = causal_conv(linear_x(u))                          (b, l, w)
    r_t = sigmoid(W_a x_t + b_a),  i_t = sigmoid(W_x x_t + b_x)  block-diagonal W (h blocks), eq. 1-2
    log a_t = -c * r_t * softplus(a_param)                         eq. 3, a_param = -Lambda
    h_t = a_t * h_{t-1} + sqrt(1 - a_t^2) * (i_t * x_t)           eq. 4
    out = linear_out(h * branch_y)

As in recurrentgemma and Hugging Face, a row's first token (position 0) resets the recurrence:
a_0 = 0 and the input is not scaled by sqrt(1 - a^2). The sqrt has a clipped gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..cache import State
from ..ops.dispatch import RGLRU_WEIGHTS, rglru_decode_step, rglru_gated, rglru_scan
from .base import (
    FP32_BYTES,
    CacheBytes,
    Decay,
    Flops,
    Mixer,
    check_positive,
    conv_flops,
    conv_state_bytes,
    linear_flops,
    no_weight_decay,
    require,
)
from .context import Context
from .conv import CausalConv1d
from .mixing import MixingOperator, chunk_groups, lower_triangle, segment_sums
from .mlp import ACTIVATION_FUNCTIONS, check_activation


@dataclass
class RGLRUConfig:
    """Griffin's recurrent block with the RG-LRU (`R`), De et al. 2024."""

    width: int | None = None  # D_RNN; None: round(4 * d_model / 3) rounded up to a multiple of n_heads
    n_heads: int | None = None  # blocks of the block-diagonal gates; None: the model's n_heads
    d_conv: int = 4
    c: float = 8.0
    a_min: float = 0.9  # a^c is initialised uniformly in [a_min, a_max]
    a_max: float = 0.999
    bias: bool = True  # on linear_x, linear_y, linear_out
    activation: str = "gelu_tanh"

    def heads(self, model) -> int:
        return self.n_heads or model.n_heads

    def lru_width(self, model) -> int:
        heads = self.heads(model)
        return self.width or heads * math.ceil(round(4 * model.d_model / 3) / heads)

    def validate(self, model, chars: str) -> None:
        check_positive(self, "rglru.", ("width", "n_heads", "d_conv", "c"))
        require(
            0.0 < self.a_min <= self.a_max < 1.0,
            f"rglru.a_min={self.a_min}, a_max={self.a_max}: need 0 < a_min <= a_max < 1",
        )
        require(self.lru_width(model) % self.heads(model) == 0, "rglru.n_heads must divide rglru.width")
        check_activation("rglru", self.activation)


@dataclass
class RecurrentState(State):
    conv: torch.Tensor  # (b, w, k - 1) in the activation dtype
    rnn: torch.Tensor  # (b, w) fp32


class RGLRU(nn.Module):
    """The real-gated linear recurrent unit; gate weights (h, w/h, w/h) act as x @ W (in, out)."""

    def __init__(self, width: int, n_heads: int, c: float = 8.0, a_min: float = 0.9, a_max: float = 0.999):
        super().__init__()
        self.width, self.n_heads, self.c = width, n_heads, c
        self.a_min, self.a_max = a_min, a_max
        block = width // n_heads
        self.input_gate_weight = nn.Parameter(torch.empty(n_heads, block, block))
        self.input_gate_bias = nn.Parameter(torch.zeros(n_heads, block))
        self.recurrent_gate_weight = nn.Parameter(torch.empty(n_heads, block, block))
        self.recurrent_gate_bias = nn.Parameter(torch.zeros(n_heads, block))
        self.a_param = nn.Parameter(torch.empty(width))
        no_weight_decay(self.a_param)
        self.reset_special_parameters()

    def reset_special_parameters(self) -> None:
        """LeCun-normal gates; a^c uniform in [a_min, a_max] (Griffin, Appendix A)."""
        block = self.width // self.n_heads
        with torch.no_grad():
            for weight in (self.input_gate_weight, self.recurrent_gate_weight):
                nn.init.normal_(weight, std=block**-0.5)
            self.input_gate_bias.zero_()
            self.recurrent_gate_bias.zero_()
            a_pow_c = torch.empty(self.width).uniform_(self.a_min, self.a_max)
            neg_log_a = -torch.log(a_pow_c) / self.c  # softplus(a_param)
            self.a_param.copy_(neg_log_a + torch.log(-torch.expm1(-neg_log_a)))

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (b, l, w) -> input gate i and recurrence gate r, each (b, l, w)."""
        x_blocks = x.unflatten(-1, (self.n_heads, -1))  # (b, l, h, w/h)
        gate_i = torch.einsum("blhi,hio->blho", x_blocks, self.input_gate_weight) + self.input_gate_bias
        gate_r = torch.einsum("blhi,hio->blho", x_blocks, self.recurrent_gate_weight) + self.recurrent_gate_bias
        return torch.sigmoid(gate_i.flatten(-2)), torch.sigmoid(gate_r.flatten(-2))

    def log_a_scale(self) -> torch.Tensor:
        """(w,): log a_t = r_t * log_a_scale."""
        return -self.c * F.softplus(self.a_param.float())

    def forward(self, x: torch.Tensor, positions: torch.Tensor, initial_state=None):
        """x (b, l, w), positions (b, l) -> y (b, l, w), final state (b, w) fp32."""
        gate_i, gate_r = self.gates(x)
        reset = positions == 0  # document start: forget the past, keep the input whole
        states, final_state = rglru_scan(x, gate_i, gate_r, self.log_a_scale(), reset, initial_state)
        return states.to(x.dtype), final_state

    def gated(self, x: torch.Tensor, y_pre: torch.Tensor, positions: torch.Tensor, activation: str, initial_state=None):
        """forward(x) * act(y_pre) in one fused kernel (gates, recurrence, product): (b, l, w) fp32 and
        the final state, or None where no kernel applies."""
        weights = {name: getattr(self, name) for name in RGLRU_WEIGHTS}
        return rglru_gated(x, y_pre, weights, self.log_a_scale(), positions == 0, initial_state, activation)


class RecurrentBlock(Mixer):
    chars = {"R": "rglru"}
    config_name = "rglru"
    Config = RGLRUConfig

    def __init__(self, d_model: int, width: int, n_heads: int, options):
        super().__init__()
        self.options, self.width = options, width
        self.activation = ACTIVATION_FUNCTIONS[options.activation]
        self.linear_y = nn.Linear(d_model, width, bias=options.bias)
        self.linear_x = nn.Linear(d_model, width, bias=options.bias)
        self.conv = CausalConv1d(width, options.d_conv, bias=True)
        self.rg_lru = RGLRU(width, n_heads, options.c, options.a_min, options.a_max)
        self.linear_out = nn.Linear(width, d_model, bias=options.bias)
        self.linear_out.residual_output = True

    @classmethod
    def from_config(cls, config, char: str = "R", ordinal: int = 0) -> RecurrentBlock:
        options = config.rglru
        return cls(config.d_model, options.lru_width(config), options.heads(config), options)

    @classmethod
    def describe_options(cls, config) -> str:
        return f"rglru w={config.rglru.lru_width(config)}"

    def allocate_state(self, batch_size: int, max_len, device, dtype) -> RecurrentState:
        return RecurrentState(
            conv=torch.zeros(batch_size, self.width, self.options.d_conv - 1, device=device, dtype=dtype),
            rnn=torch.zeros(batch_size, self.width, device=device, dtype=torch.float32),
        )

    def forward(self, u: torch.Tensor, state: RecurrentState | None, ctx: Context) -> torch.Tensor:
        """u (b, l, d) -> (b, l, d); updates `state` (conv, rnn) in place when given.

        Decoding one token runs the fused step (ops/rglru_step_cpu.py), longer inputs the fused core
        (gates, recurrence, product with the y branch: ops/rglru_gated_cpu.py) where a kernel applies."""
        if state is not None and ctx.valid is None and u.shape[1] == 1:
            weights, c, activation = self._step_weights(), self.rg_lru.c, self.options.activation
            out = rglru_decode_step(u, ctx.positions, state.conv, state.rnn, weights, c, activation)
            if out is not None:
                return out.to(u.dtype)
        y_pre, x_in = self.linear_y(u), self.linear_x(u)
        x, conv_state = self.conv(ctx.zero_padding(x_in), None if state is None else state.conv)
        x = ctx.zero_padding(x)
        initial_state = None if state is None else state.rnn
        fused = self.rg_lru.gated(x, y_pre, ctx.positions, self.options.activation, initial_state)
        if fused is None:
            h, rnn_state = self.rg_lru(x, ctx.positions, initial_state)
            gated = h * self.activation(y_pre)
        else:
            gated, rnn_state = fused
        if state is not None:  # in place: the cache's tensors are allocated once
            state.conv.copy_(conv_state)
            state.rnn.copy_(rnn_state)
        return self.linear_out(gated.to(u.dtype))

    def decode_program_step(self, norm, state: RecurrentState | None, batch: int, shared: dict):
        """This sub-layer's step in a whole-step decode (ops/decode_program.py), or None."""
        if state is None or norm is None:
            return None
        from ..ops import rglru_step_cpu

        return rglru_step_cpu.program_step(self, norm, state, self.options.activation)

    def _step_weights(self) -> dict:
        """The decoding step's weights by the names ops.rglru_step_cpu.STEP_WEIGHTS gives them, read from
        the modules' parameter dicts: an nn.Module attribute lookup costs ~0.5 us, a dozen per token."""
        modules = self._modules
        lru, conv = modules["rg_lru"]._parameters, modules["conv"]._parameters
        weights = {name: lru[name] for name in RGLRU_WEIGHTS}
        for prefix in ("x", "y", "out"):
            linear = modules[f"linear_{prefix}"]._parameters
            weights[f"{prefix}_weight"], weights[f"{prefix}_bias"] = linear["weight"], linear.get("bias")
        return {"conv_weight": conv["weight"], "conv_bias": conv.get("bias"), "a_param": lru["a_param"], **weights}

    def branches(self, u: torch.Tensor, ctx: Context, conv_state: torch.Tensor | None = None):
        """The gate branch act(linear_y(u)), the recurrence input x (b, l, w) after the conv, the conv's state."""
        branch_y = self.activation(self.linear_y(u))
        x, conv_state = self.conv(ctx.zero_padding(self.linear_x(u)), conv_state)
        return branch_y, ctx.zero_padding(x), conv_state

    def scan_inputs(self, u: torch.Tensor, ctx: Context):
        """Up to the RG-LRU: x (1, N, w), the other branch, input gate i (1, N, w), log a_t (N, w)
        float64 and the reset mask (N, 1) (a row's first token: a_t = 0, input unscaled)."""
        branch_y, x, _ = self.branches(u, ctx)
        lru = self.rg_lru
        gate_i, gate_r = lru.gates(x)
        log_a = (-lru.c * gate_r.double() * F.softplus(lru.a_param.double()))[0]
        reset = (ctx.positions[0] == 0).unsqueeze(-1)
        return x, branch_y, gate_i, log_a, reset

    def flops(self, seq_len: int) -> Flops:
        """Dense: two input linears, the conv, the block-diagonal gates, the output linear. Mixing per
        channel: a_t = exp(-c r_t softplus(Lambda)) (3), sqrt(1 - a_t^2) (3), i_t x_t times it (2),
        the update (2): 10 w."""
        lru = self.rg_lru
        gates = 2 * (lru.input_gate_weight.numel() + lru.recurrent_gate_weight.numel())
        dense = linear_flops(self.linear_y) + linear_flops(self.linear_x) + conv_flops(self.conv) + gates
        dense += linear_flops(self.linear_out)
        return Flops(dense, 10 * self.width * seq_len, 10 * self.width)

    def cache_bytes(self, seq_len: int, batch: int, dtype_bytes: int) -> CacheBytes:
        state = conv_state_bytes(self.conv, batch, dtype_bytes) + batch * self.width * FP32_BYTES
        return CacheBytes(state=state, simplified=batch * self.linear_out.out_features * dtype_bytes)

    def mixing_operators(self, u: torch.Tensor, ctx: Context) -> list[MixingOperator]:
        """One matrix per channel (Griffin eq. 4): M_c[t, s] = prod_{s<u<=t} a_u[c] * sqrt(1 - a_s[c]^2) i_s[c],
        zero across a reset."""
        x, branch_y, gate_i, log_a, reset = self.scan_inputs(u, ctx)
        multiplier = torch.where(reset, 1.0, torch.sqrt(1 - torch.exp(2 * log_a)))
        input_scale = gate_i[0].double() * multiplier  # (N, w)
        cumulative = torch.where(reset, 0.0, log_a).cumsum(0)
        resets = reset[:, 0].long().cumsum(0)
        length = x.shape[1]
        lower = lower_triangle(length, u.device)
        no_reset_between = lower & (resets.unsqueeze(1) == resets.unsqueeze(0))  # no reset in (s, t]

        def build(groups):
            matrix = torch.exp(segment_sums(cumulative[:, groups], lower)) * input_scale[:, groups].T.unsqueeze(1)
            return matrix.masked_fill(~no_reset_between, 0.0)

        def readout(mixed):
            return self.linear_out(mixed[..., 0].T.unsqueeze(0).to(u.dtype) * branch_y)

        return [MixingOperator("rglru", "channel", x[0].T.unsqueeze(-1), build, readout, chunk_groups(length))]

    def decay_rates(self, u: torch.Tensor, ctx: Context) -> Decay:
        """-log a_t = c * r_t[c] * softplus(-Lambda[c]), averaged over tokens (the first, a reset, skipped)."""
        _, _, _, log_a, reset = self.scan_inputs(u, ctx)
        kept = ~reset[:, 0]
        if not bool(kept.any()):
            raise ValueError("the RG-LRU resets at the first token: give at least 2 tokens")
        return Decay("channel", -log_a[kept].mean(0), "rglru")
