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

import torch
import torch.nn.functional as F
from torch import nn

from ..cache import LayerState
from ..ops.dispatch import rglru_scan
from .context import Context
from .conv import CausalConv1d
from .mlp import ACTIVATION_FUNCTIONS


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

    def forward(self, x: torch.Tensor, positions: torch.Tensor, initial_state=None):
        """x (b, l, w), positions (b, l) -> y (b, l, w), final state (b, w) fp32."""
        gate_i, gate_r = self.gates(x)
        log_a_scale = -self.c * F.softplus(self.a_param.float())  # (w,): log a_t = r_t * log_a_scale
        reset = positions == 0  # document start: forget the past, keep the input whole
        states, final_state = rglru_scan(x, gate_i, gate_r, log_a_scale, reset, initial_state)
        return states.to(x.dtype), final_state


class RecurrentBlock(nn.Module):
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
        return cls(config.d_model, config.rnn_width, config.rglru.n_heads or config.n_heads, config.rglru)

    def allocate_state(self, batch_size: int, max_len, device, dtype) -> LayerState:
        return LayerState(
            conv=torch.zeros(batch_size, self.width, self.options.d_conv - 1, device=device, dtype=dtype),
            rnn=torch.zeros(batch_size, self.width, device=device, dtype=torch.float32),
        )

    def forward(self, u: torch.Tensor, state: LayerState | None, ctx: Context) -> torch.Tensor:
        """u (b, l, d) -> (b, l, d); updates `state` (conv, rnn) in place when given."""
        branch_y = self.activation(self.linear_y(u))
        x, conv_state = self.conv(ctx.zero_padding(self.linear_x(u)), None if state is None else state.conv)
        x = ctx.zero_padding(x)
        h, rnn_state = self.rg_lru(x, ctx.positions, None if state is None else state.rnn)
        if state is not None:  # in place: the cache's tensors are allocated once
            state.conv.copy_(conv_state)
            state.rnn.copy_(rnn_state)
        return self.linear_out(h * branch_y)
