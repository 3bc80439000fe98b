"""The RG-LRU block's core as one numba kernel, forward and backward: gate pre-activations in,
gated output out (the recurrence itself as in ops/linear_scan_cpu.py).

Glossary: b batch, l tokens, d channels (heads x channels per head for the block-diagonal gates).

Griffin eq. 1-4, with the layer's activation act() on the y branch:

    i_t = sigmoid(g_i),  r_t = sigmoid(g_r),  a_t = exp(r_t * log_a_scale)
    h_t = a_t * h_{t-1} + sqrt(1 - a_t^2) * i_t * x_t,   y_t = h_t * act(y_pre_t)

as op `hybridlm::rglru_gated` (ops/custom_ops.py), and the activations the fused decode step
(ops/rglru_step_cpu.py) shares.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange

from .linear_scan_cpu import MIN_SQRT_ARGUMENT
from .numba_support import Kernel, as_array, copy_into, exp_nonpositive, expm1_nonpositive, sigmoid

ACTIVATION_KINDS = {"gelu_tanh": 0, "silu": 1, "gelu": 2, "relu": 3}  # the layer's act() on the y branch
_GELU_K = np.float32(0.7978845608028654)  # sqrt(2 / pi)
_GELU_C = np.float32(0.044715)
_INV_SQRT2 = np.float32(0.7071067811865476)
_INV_SQRT_2PI = np.float32(0.3989422804014327)
_HALF, _ONE = np.float32(0.5), np.float32(1.0)


@njit(inline="always", fastmath=True, error_model="numpy")
def _tanh(z):
    e = exp_nonpositive(-2 * abs(z))
    t = (_ONE - e) / (_ONE + e)
    return t if z >= 0 else -t


@njit(inline="always", fastmath=True, error_model="numpy")
def _gelu_tanh(v):
    return _HALF * v * (_ONE + _tanh(_GELU_K * (v + _GELU_C * v * v * v)))


@njit(inline="always", fastmath=True, error_model="numpy")
def _gelu_tanh_derivative(v):
    t = _tanh(_GELU_K * (v + _GELU_C * v * v * v))
    return _HALF * (_ONE + t) + _HALF * v * (_ONE - t * t) * _GELU_K * (_ONE + 3 * _GELU_C * v * v)


@njit(inline="always", fastmath=True, error_model="numpy")
def _silu_derivative(v):
    s = sigmoid(v)
    return s * (_ONE + v * (_ONE - s))


@njit(inline="always", fastmath=True, error_model="numpy")
def _erf(v):
    return np.float32(math.erf(v))


@njit(inline="always", fastmath=True, error_model="numpy")
def activate(v, kind):
    """act(v): 0 GELU (tanh form), 1 SiLU, 2 GELU (erf), 3 ReLU, as `torch.nn.functional`."""
    if kind == 0:
        return _gelu_tanh(v)
    if kind == 1:
        return v * sigmoid(v)
    if kind == 2:
        return _HALF * v * (_ONE + _erf(v * _INV_SQRT2))
    return v if v > 0 else np.float32(0.0)


@njit(inline="always", fastmath=True, error_model="numpy")
def activate_derivative(v, kind):
    """d act(v) / dv for the kinds of `activate`."""
    if kind == 0:
        return _gelu_tanh_derivative(v)
    if kind == 1:
        return _silu_derivative(v)
    if kind == 2:
        return _HALF * (_ONE + _erf(v * _INV_SQRT2)) + v * _INV_SQRT_2PI * np.exp(-_HALF * v * v)
    return _ONE if v > 0 else np.float32(0.0)


@njit(inline="always", fastmath=True, error_model="numpy")
def _gate_output(h, y, out, kind):
    """out = h * act(y) over a block, one loop per kind: a loop holding erf's call, or a branch on the
    kind, would not vectorise."""
    if kind == 0:
        for c in range(h.size):
            out[c] = h[c] * _gelu_tanh(y[c])
    elif kind == 1:
        for c in range(h.size):
            out[c] = h[c] * y[c] * sigmoid(y[c])
    else:
        for c in range(h.size):
            out[c] = h[c] * activate(y[c], kind)


@njit(inline="always", fastmath=True, error_model="numpy")
def _gate_output_backward(grad_out, h, y, grad_y, grad_h, kind):
    """Through out = h * act(y): grad_y = grad_out h act'(y), grad_h += grad_out act(y)."""
    if kind == 0:
        for c in range(h.size):
            grad_y[c] = grad_out[c] * h[c] * _gelu_tanh_derivative(y[c])
            grad_h[c] += grad_out[c] * _gelu_tanh(y[c])
    elif kind == 1:
        for c in range(h.size):
            grad_y[c] = grad_out[c] * h[c] * _silu_derivative(y[c])
            grad_h[c] += grad_out[c] * y[c] * sigmoid(y[c])
    else:
        for c in range(h.size):
            grad_y[c] = grad_out[c] * h[c] * activate_derivative(y[c], kind)
            grad_h[c] += grad_out[c] * activate(y[c], kind)


def _gated_forward(x, gates, y_pre, log_a_scale, reset, h0, kind, keep_states, states, out, final):
    batch, length, channels = x.shape
    heads = gates.shape[0]
    width = channels // heads
    for job in prange(batch * heads):  # one gate block (head) of one row: its gates are contiguous
        row, c0 = job // heads, (job % heads) * width
        head, c1 = job % heads, c0 + width
        h = h0[row, c0:c1].copy()
        scale = log_a_scale[c0:c1]
        for t in range(length):
            g = gates[head, row * length + t]  # [input gate | recurrence gate] pre-activations (2 width,)
            x_t, y_t, out_t = x[row, t, c0:c1], y_pre[row, t, c0:c1], out[row, t, c0:c1]
            if reset[row, t]:
                for c in range(width):
                    h[c] = sigmoid(g[c]) * x_t[c]
            else:
                for c in range(width):
                    log_a = sigmoid(g[width + c]) * scale[c]
                    multiplier = np.sqrt(-expm1_nonpositive(2 * log_a))
                    h[c] = exp_nonpositive(log_a) * h[c] + multiplier * sigmoid(g[c]) * x_t[c]
            _gate_output(h, y_t, out_t, kind)
            if keep_states:
                copy_into(states[row, t, c0:c1], h)
        copy_into(final[row, c0:c1], h)


def _gated_backward(
    x, gates, y_pre, log_a_scale, reset, h0, states, grad_out, grad_final, kind, min_sqrt_argument,
    grad_x, grad_gates, grad_y, grad_scale, grad_h0,
):  # fmt: skip
    batch, length, channels = x.shape
    heads = gates.shape[0]
    width = channels // heads
    for job in prange(batch * heads):
        row, c0 = job // heads, (job % heads) * width
        head, c1 = job % heads, c0 + width
        scale = log_a_scale[c0:c1]
        grad_h = grad_final[row, c0:c1].copy()  # dL/dh_t, carried backwards in time
        grad_scale_total = np.zeros(width, np.float64)
        for t in range(length - 1, -1, -1):
            n = row * length + t
            g, grad_g = gates[head, n], grad_gates[head, n]
            x_t, y_t, h_t = x[row, t, c0:c1], y_pre[row, t, c0:c1], states[row, t, c0:c1]
            h_prev = states[row, t - 1, c0:c1] if t > 0 else h0[row, c0:c1]
            grad_out_t, grad_x_t, grad_y_t = grad_out[row, t, c0:c1], grad_x[row, t, c0:c1], grad_y[row, t, c0:c1]
            _gate_output_backward(grad_out_t, h_t, y_t, grad_y_t, grad_h, kind)
            if reset[row, t]:
                for c in range(width):
                    i = sigmoid(g[c])
                    grad_x_t[c] = grad_h[c] * i
                    grad_g[c] = grad_h[c] * x_t[c] * i * (_ONE - i)
                    grad_g[width + c] = 0.0
                    grad_h[c] = 0.0
                continue
            for c in range(width):
                i, r = sigmoid(g[c]), sigmoid(g[width + c])
                log_a = r * scale[c]
                a = exp_nonpositive(log_a)
                u = -expm1_nonpositive(2 * log_a)  # 1 - a^2
                multiplier = np.sqrt(u)
                grad_x_t[c] = grad_h[c] * i * multiplier
                grad_g[c] = grad_h[c] * x_t[c] * multiplier * i * (_ONE - i)
                # d sqrt(u)/du = 1 / (2 sqrt(max(u, min))), du/da = -2a, da/dlog_a = a
                grad_a = grad_h[c] * h_prev[c] - grad_h[c] * i * x_t[c] * a / np.sqrt(max(u, min_sqrt_argument))
                grad_log_a = grad_a * a
                grad_g[width + c] = grad_log_a * scale[c] * r * (_ONE - r)
                grad_scale_total[c] += grad_log_a * r
                grad_h[c] *= a
        copy_into(grad_h0[row, c0:c1], grad_h)
        copy_into(grad_scale[row, c0:c1], grad_scale_total)


_gated_forward_kernel, _gated_backward_kernel = Kernel(_gated_forward), Kernel(_gated_backward)


def gate_weight(input_gate_weight, recurrent_gate_weight) -> torch.Tensor:
    """Both gates' block-diagonal weights side by side: (h, w, 2w), detached fp32 (w = d / h)."""
    return torch.cat([input_gate_weight.detach(), recurrent_gate_weight.detach()], 2).float()


def gate_bias(input_gate_bias, recurrent_gate_bias) -> torch.Tensor:
    """Both gates' biases side by side: (h, 1, 2w), detached fp32."""
    return torch.cat([input_gate_bias.detach(), recurrent_gate_bias.detach()], 1).float().unsqueeze(1)


def _heads_view(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(b, l, d) -> (h, b l, d / h), a strided view that bmm reads without a copy."""
    return x.reshape(-1, heads, x.shape[-1] // heads).transpose(0, 1)


def rglru_gated_forward(
    x, y_pre, input_gate_weight, input_gate_bias, recurrent_gate_weight, recurrent_gate_bias,
    log_a_scale, reset, initial_state, activation_name: str, keep: bool = False,
):  # fmt: skip
    """x, y_pre (b, l, d) fp32; gate weights (h, d/h, d/h), biases (h, d/h); log_a_scale (d,); reset (b, l)
    bool; initial_state (b, d) -> out = h * act(y_pre) (b, l, d), the final state (b, d), and for the
    backward (`keep`) all states (b, l, d) and the gate pre-activations (h, b l, 2 d/h); all fp32."""
    x = x.detach().float().contiguous()
    heads = input_gate_weight.shape[0]
    weight = gate_weight(input_gate_weight, recurrent_gate_weight)
    bias = gate_bias(input_gate_bias, recurrent_gate_bias)
    gates = torch.baddbmm(bias, _heads_view(x, heads), weight)  # (h, b l, 2 d/h)
    out = torch.empty(x.shape, dtype=torch.float32)
    final = torch.empty(x.shape[0], x.shape[2], dtype=torch.float32)
    states = torch.empty(x.shape if keep else (0, 0, 0), dtype=torch.float32)
    _gated_forward_kernel(
        x.numel(),
        as_array(x),
        gates.numpy(),
        as_array(y_pre),
        as_array(log_a_scale),
        reset.detach().contiguous().numpy(),
        as_array(initial_state),
        ACTIVATION_KINDS[activation_name],
        keep,
        states.numpy(),
        out.numpy(),
        final.numpy(),
    )
    return out, final, states, gates


def rglru_gated_backward(
    x, y_pre, input_gate_weight, recurrent_gate_weight, log_a_scale, reset, initial_state, states, gates,
    grad_out, grad_final, activation_name: str,
):  # fmt: skip
    """Gradients of x, y_pre, the input gate's weight and bias, the recurrence gate's weight and bias,
    log_a_scale and the initial state (fp32), from the saved states and gate pre-activations."""
    x = x.detach().float().contiguous()
    heads, block = input_gate_weight.shape[:2]
    grad_x, grad_y = torch.empty(x.shape), torch.empty(x.shape)
    grad_gates = torch.empty(gates.shape)
    grad_scale = torch.empty(x.shape[0], x.shape[2], dtype=torch.float64)
    grad_h0 = torch.empty(x.shape[0], x.shape[2])
    _gated_backward_kernel(
        x.numel(),
        as_array(x),
        gates.detach().numpy(),
        as_array(y_pre),
        as_array(log_a_scale),
        reset.detach().contiguous().numpy(),
        as_array(initial_state),
        states.detach().numpy(),
        as_array(grad_out),
        as_array(grad_final),
        ACTIVATION_KINDS[activation_name],
        MIN_SQRT_ARGUMENT,
        *(t.numpy() for t in (grad_x, grad_gates, grad_y, grad_scale, grad_h0)),
    )
    weight = gate_weight(input_gate_weight, recurrent_gate_weight)
    _heads_view(grad_x, heads).baddbmm_(grad_gates, weight.transpose(1, 2))  # through x @ W
    grad_weight = torch.bmm(_heads_view(x, heads).transpose(1, 2), grad_gates)  # (h, d/h, 2 d/h)
    grad_bias = grad_gates.sum(1)
    return (
        grad_x,
        grad_y,
        grad_weight[..., :block].clone(),
        grad_bias[:, :block].clone(),
        grad_weight[..., block:].clone(),
        grad_bias[:, block:].clone(),
        grad_scale.sum(0).float(),
        grad_h0,
    )
