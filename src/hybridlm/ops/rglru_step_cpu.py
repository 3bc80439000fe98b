"""One decoding step of Griffin's recurrent block, from the two input linears' outputs to the gated
RG-LRU output, in one numba call.

Glossary (layers/recurrent.py): b batch, d = D_RNN channels, h gate blocks, w = d / h, k conv width.

Through the layer's torch code one token is ~40 small eager ops (conv, two block-diagonal gate
products, the gate arithmetic, the recurrence, the activation and the product with the y branch),
while its arithmetic is a few thousand multiply-adds. This kernel does the same step for one token
(Griffin eq. 1-4, De et al. 2024):

    x      = conv(window, x_in)                   the window (b, d, k-1) shifts in place
    i, r   = sigmoid(x W_x + b_x), sigmoid(x W_a + b_a)     per block, (h, w, 2w) weights
    log a  = r * log_a_scale,   h = a h + sqrt(1 - a^2) i x   (a = 0, no sqrt at a reset)
    out    = h * act(y_pre)

so the caller's conv and recurrence states are updated in place and only out (b, d) is allocated.
"""

from __future__ import annotations

import weakref

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit

from .linear_scan_cpu import ACTIVATION_KINDS, activate, gate_bias, gate_weight
from .numba_support import as_array, exp_nonpositive, expm1_nonpositive, sigmoid


@njit(fastmath=True, error_model="numpy", cache=True)
def _step(
    x_in, y_pre, reset, conv_state, conv_weight, conv_bias, gate_w, gate_b, log_a_scale, kind, rnn_state, out
):  # fmt: skip
    batch, channels = x_in.shape
    width = conv_weight.shape[1]
    heads, block, _ = gate_w.shape
    x = np.empty(channels, np.float32)
    gates = np.empty(2 * block, np.float32)
    for row in range(batch):
        for c in range(channels):  # depthwise conv over (window, new input), then the window shifts
            acc = conv_bias[c] + conv_weight[c, width - 1] * x_in[row, c]
            for j in range(width - 1):
                acc += conv_weight[c, j] * conv_state[row, c, j]
            for j in range(width - 2):
                conv_state[row, c, j] = conv_state[row, c, j + 1]
            if width > 1:
                conv_state[row, c, width - 2] = x_in[row, c]
            x[c] = acc
        for g in range(heads):
            c0 = g * block
            for o in range(2 * block):
                gates[o] = gate_b[g, o]
            for i in range(block):  # x_block @ [W_x | W_a]: rows of the weight are contiguous
                x_i = x[c0 + i]
                for o in range(2 * block):
                    gates[o] += x_i * gate_w[g, i, o]
            for j in range(block):
                c = c0 + j
                gated_x = sigmoid(gates[j]) * x[c]
                if reset[row]:
                    h = gated_x
                else:
                    log_a = sigmoid(gates[block + j]) * log_a_scale[c]
                    multiplier = np.sqrt(-expm1_nonpositive(2 * log_a))  # 1 - a^2 without cancellation
                    h = exp_nonpositive(log_a) * rnn_state[row, c] + multiplier * gated_x
                rnn_state[row, c] = h
                out[row, c] = h * activate(y_pre[row, c], kind)


_WEIGHT_ARRAYS: dict = {}  # id(input gate weight) -> (key, numpy arrays of the step's weights); dropped with it


def _weight_arrays(conv_weight, conv_bias, input_gate_weight, input_gate_bias, recurrent_gate_weight,
                   recurrent_gate_bias, a_param, c) -> tuple:  # fmt: skip
    """The step's weights as numpy arrays, the two gates side by side and log_a_scale = -c softplus(a_param),
    kept between tokens. Rebuilt when a weight is replaced (new storage) or modified in place (its version moves)."""
    parameters = [conv_weight, conv_bias, input_gate_weight, input_gate_bias, recurrent_gate_weight]
    parameters += [recurrent_gate_bias, a_param]
    key = (c, *((p.data_ptr(), p._version) for p in parameters if p is not None))
    cached = _WEIGHT_ARRAYS.get(id(input_gate_weight))
    if cached is not None and cached[0] == key:
        return cached[1]
    if cached is None:  # tensors compare elementwise, so they key by id, forgotten when the weight is freed
        weakref.finalize(input_gate_weight, _WEIGHT_ARRAYS.pop, id(input_gate_weight), None)
    channels = conv_weight.shape[0]
    with torch.no_grad():
        arrays = (
            as_array(conv_weight.reshape(channels, -1)),
            as_array(conv_bias) if conv_bias is not None else np.zeros(channels, np.float32),
            gate_weight(input_gate_weight, recurrent_gate_weight).numpy(),
            gate_bias(input_gate_bias, recurrent_gate_bias)[:, 0].contiguous().numpy(),
            (-c * F.softplus(a_param.float())).numpy(),
        )
    _WEIGHT_ARRAYS[id(input_gate_weight)] = (key, arrays)
    return arrays


def rglru_decode_step(
    x_in, y_pre, reset, conv_state, rnn_state, conv_weight, conv_bias, input_gate_weight, input_gate_bias,
    recurrent_gate_weight, recurrent_gate_bias, a_param, c: float, activation: str,
) -> torch.Tensor:  # fmt: skip
    """x_in = linear_x(u), y_pre = linear_y(u) (b, 1, d); reset (b,) bool (a row's first token) -> out
    (b, 1, d) fp32; updates conv_state (b, d, k-1) and rnn_state (b, d) in place (float32, contiguous).
    Weights as layers/recurrent.py holds them: conv (d, 1, k), gates (h, w, w) and (h, w), a_param (d,)."""
    batch, _, channels = x_in.shape
    arrays = _weight_arrays(
        conv_weight, conv_bias, input_gate_weight, input_gate_bias, recurrent_gate_weight, recurrent_gate_bias,
        a_param, c,
    )  # fmt: skip
    out = torch.empty(batch, channels, dtype=torch.float32)
    _step(
        as_array(x_in.reshape(batch, channels)),
        as_array(y_pre.reshape(batch, channels)),
        reset.contiguous().numpy(),
        conv_state.numpy(),
        *arrays,
        ACTIVATION_KINDS[activation],
        rnn_state.numpy(),
        out.numpy(),
    )
    return out.view(batch, 1, channels)
