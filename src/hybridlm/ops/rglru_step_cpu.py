"""One decoding step of Griffin's recurrent block, from its (normed) input to its output, in one numba call.

Glossary (layers/recurrent.py): b batch, d = D_RNN channels, h gate blocks, w = d / h, k conv width.

Through the layer's torch code one token is ~45 small eager ops (three linears, the conv, two
block-diagonal gate products, the gate arithmetic, the recurrence, the activation and the product
with the y branch), while its arithmetic is a few thousand multiply-adds (d_model 64) to a few
hundred thousand (384, where reading the weights dominates either way). This kernel does the same
step for one token (Griffin eq. 1-4 and Figure 2, De et al. 2024):

    x_in, y_pre = linear_x(u), linear_y(u)        weights (d, d_model), read once for all rows
    x      = conv(window, x_in)                   the window (b, d, k-1) shifts in place
    i, r   = sigmoid(x W_x + b_x), sigmoid(x W_a + b_a)     per block, kept as (h, 2w, w)
    log a  = r * log_a_scale,   h = a h + sqrt(1 - a^2) i x   (a = 0, no sqrt at a reset)
    out    = linear_out(h * act(y_pre))

so the caller's conv and recurrence states are updated in place and only out (b, d_model) is allocated.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit

from .causal_conv_cpu import conv_token
from .decode_cpu import DecodeWeights, gemv_rows, norm_views, rms_norm_into, viewable
from .numba_support import as_array, exp_nonpositive, expm1_nonpositive, sigmoid, step_arrays
from .rglru_gated_cpu import ACTIVATION_KINDS, activate, gate_bias, gate_weight


@njit(fastmath=True, error_model="numpy", cache=True)
def _linear(weight, bias, inputs, outputs):
    """outputs (b, o) = inputs (b, i) @ weight (o, i)^T + bias: each weight row read once for every row."""
    for o in range(weight.shape[0]):
        for row in range(inputs.shape[0]):
            acc = bias[o]
            for i in range(weight.shape[1]):
                acc += weight[o, i] * inputs[row, i]
            outputs[row, o] = acc


@njit(fastmath=True, error_model="numpy", cache=True)
def _step(
    u, positions, conv_state, x_weight, x_bias, y_weight, y_bias, conv_weight, conv_bias, gate_w, gate_b,
    log_a_scale, out_weight, out_bias, kind, rnn_state, linears, x_in, y_pre, gated, out,
):  # fmt: skip
    batch = u.shape[0]
    channels = conv_weight.shape[0]
    heads, _, block = gate_w.shape
    if linears:  # else the caller gives x_in, y_pre and applies linear_out to `gated`
        _linear(x_weight, x_bias, u, x_in)
        _linear(y_weight, y_bias, u, y_pre)
    x = np.empty(channels, np.float32)
    gates = np.empty(2 * block, np.float32)
    for row in range(batch):
        for c in range(channels):
            x[c] = conv_token(conv_weight, conv_bias, conv_state, row, c, x_in[row, c])
        reset = positions[row, 0] == 0  # a row's first token: a = 0, the input unscaled
        for g in range(heads):
            c0 = g * block
            for o in range(2 * block):  # x_block @ [W_x | W_a] as dot products (they vectorise)
                acc = gate_b[g, o]
                for i in range(block):
                    acc += gate_w[g, o, i] * x[c0 + i]
                gates[o] = acc
            for j in range(block):
                c = c0 + j
                gated_x = sigmoid(gates[j]) * x[c]
                if reset:
                    h = gated_x
                else:
                    log_a = sigmoid(gates[block + j]) * log_a_scale[c]
                    multiplier = np.sqrt(-expm1_nonpositive(2 * log_a))  # 1 - a^2 without cancellation
                    h = exp_nonpositive(log_a) * rnn_state[row, c] + multiplier * gated_x
                rnn_state[row, c] = h
                gated[row, c] = h * activate(y_pre[row, c], kind)
    if linears:
        _linear(out_weight, out_bias, gated, out)


@njit(fastmath=True, error_model="numpy", cache=True)
def _sublayer_step(
    u, norm_weight, eps, offset, x_weight, x_bias, y_weight, y_bias, conv_state, conv_weight, conv_bias, gate_w,
    gate_b, log_a_scale, out_weight, out_bias, kind, rnn_state, positions, out,
):  # fmt: skip
    """The pre-normed block for one token, out = linear_out(step(RMSNorm(u))), its three linears on
    decode_cpu's GEMV (the `rglru` step of a whole-step decode, ops/decode_program.py); positions (b,)."""
    batch = u.shape[0]
    channels = conv_weight.shape[0]
    normed = np.empty_like(u)
    rms_norm_into(u, norm_weight, eps, offset, normed)
    x_in = np.empty((batch, channels), np.float32)
    y_pre = np.empty((batch, channels), np.float32)
    gemv_rows(x_weight, x_bias, normed, 0, x_in, 0)
    gemv_rows(y_weight, y_bias, normed, 0, y_pre, 0)
    gated = np.empty((batch, channels), np.float32)
    _step(
        normed, positions.reshape((batch, 1)), conv_state, x_weight, x_bias, y_weight, y_bias, conv_weight, conv_bias,
        gate_w, gate_b, log_a_scale, out_weight, out_bias, kind, rnn_state, False, x_in, y_pre, gated, out,
    )  # fmt: skip
    gemv_rows(out_weight, out_bias, gated, 0, out, 0)


STEP_WEIGHTS = (
    "x_weight", "x_bias", "y_weight", "y_bias", "conv_weight", "conv_bias", "input_gate_weight", "input_gate_bias",
    "recurrent_gate_weight", "recurrent_gate_bias", "a_param", "out_weight", "out_bias",
)  # fmt: skip
# linears of up to this many weights run inside the kernel (d_model 64: three fewer torch calls a token);
# larger ones through torch, whose GEMV streams weights from memory faster than the kernel's loop
# (measured at d_model 384: a decoding step 10-20 % slower with them inside)
LINEARS_IN_KERNEL_MAX = 1 << 16


def _weight_arrays(weights: dict, c: float) -> tuple:
    """The step's weights as numpy arrays (views of float32 parameters), the two gates side by side and
    log_a_scale = -c softplus(a_param), kept between tokens by `numba_support.step_arrays`."""
    w = weights

    def build():
        with torch.no_grad():
            return (
                as_array(w["x_weight"]),
                _bias_array(w["x_bias"], w["x_weight"].shape[0]),
                as_array(w["y_weight"]),
                _bias_array(w["y_bias"], w["y_weight"].shape[0]),
                as_array(w["conv_weight"].reshape(w["conv_weight"].shape[0], -1)),
                _bias_array(w["conv_bias"], w["conv_weight"].shape[0]),
                gate_weight(w["input_gate_weight"], w["recurrent_gate_weight"]).transpose(1, 2).contiguous().numpy(),
                gate_bias(w["input_gate_bias"], w["recurrent_gate_bias"])[:, 0].contiguous().numpy(),
                (-c * F.softplus(w["a_param"].float())).numpy(),
                as_array(w["out_weight"]),
                _bias_array(w["out_bias"], w["out_weight"].shape[0]),
            )

    return step_arrays(w["input_gate_weight"], [w[name] for name in STEP_WEIGHTS], build, extra_key=(c,))


def _bias_array(bias, size: int) -> np.ndarray:
    return as_array(bias) if bias is not None else np.zeros(size, np.float32)


def rglru_decode_step(u, positions, conv_state, rnn_state, weights: dict, c: float, activation: str) -> torch.Tensor:
    """u (b, 1, d_model), positions (b, 1) int64 (0: a row's first token, the recurrence resets) -> the
    block's output (b, 1, d_model) fp32; updates conv_state (b, d, k-1) and rnn_state (b, d) in place
    (float32, contiguous). `weights` by the names in STEP_WEIGHTS, as layers/recurrent.py holds them:
    linear_x, linear_y (d, d_model) and linear_out (d_model, d) with their biases (or None), conv
    (d, 1, k) and its bias, gates (h, w, w) and (h, w), a_param (d,)."""
    batch, _, d_model = u.shape
    arrays = _weight_arrays(weights, c)
    channels = arrays[4].shape[0]
    linears = arrays[0].size <= LINEARS_IN_KERNEL_MAX
    if linears:
        x_in, y_pre = np.empty((batch, channels), np.float32), np.empty((batch, channels), np.float32)
    else:
        x_in = as_array(F.linear(u, weights["x_weight"], weights["x_bias"]).reshape(batch, channels))
        y_pre = as_array(F.linear(u, weights["y_weight"], weights["y_bias"]).reshape(batch, channels))
    gated = torch.empty(batch, channels, dtype=torch.float32)
    out = torch.empty(batch, arrays[9].shape[0] if linears else 0, dtype=torch.float32)
    _step(
        as_array(u.reshape(batch, d_model)),
        positions.contiguous().numpy(),
        conv_state.numpy(),
        *arrays,
        ACTIVATION_KINDS[activation],
        rnn_state.numpy(),
        linears,
        x_in,
        y_pre,
        gated.numpy(),
        out.numpy(),
    )
    if not linears:
        out = F.linear(gated, weights["out_weight"].to(gated.dtype), weights["out_bias"])
    return out.view(batch, 1, -1)


def program_step(block, norm, state, activation: str):
    """The block's step in a whole-step decode (`_sublayer_step`): its pre-norm's views, the step's
    arrays (`_weight_arrays`) and its states viewed in place; None unless every parameter is float32,
    contiguous and on the CPU, and so are the states."""
    weights = block._step_weights()
    parameters = [weights[name] for name in STEP_WEIGHTS]
    if not viewable(norm.weight, *parameters, state.conv, state.rnn):
        return None
    from .decode_program import ProgramStep

    gates = ("input_gate_weight", "recurrent_gate_weight", "input_gate_bias", "recurrent_gate_bias", "a_param")
    held = DecodeWeights([norm.weight, *parameters], derived_from=tuple(weights[name] for name in gates))
    x_w, x_b, y_w, y_b, conv_w, conv_b, *gates_to_out = _weight_arrays(weights, block.rg_lru.c)
    args = (
        *norm_views(norm), x_w, x_b, y_w, y_b, state.conv.numpy(), conv_w, conv_b, *gates_to_out,
        ACTIVATION_KINDS[activation], state.rnn.numpy(),
    )  # fmt: skip
    return ProgramStep("rglru", args, [held], [(state, "conv"), (state, "rnn")])
