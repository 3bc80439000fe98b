"""RG-LRU recurrence with its gate arithmetic fused in, as a numba kernel (forward and backward).

Glossary: b batch, l tokens, d channels, w channels per block (one thread's work item).

Computes exactly `linear_scan.rglru_scan_ref` (Griffin eq. 3-4):
    a_t = exp(r_t * log_a_scale),  h_t = a_t * h_{t-1} + sqrt(1 - a_t^2) * i_t * x_t,
    with a_t = 0 and sqrt(.) = 1 at a reset, and the sqrt's gradient clipped as in recurrentgemma.
Folding the gate arithmetic in saves about a dozen (b, l, d) passes each way over the plain scan.
There is no state expansion, so every state is an output and nothing is recomputed but a_t:
the backward runs g_t = dL/dh_t + a_{t+1} g_{t+1} over the saved states. One pass over time per
block of channels (a whole row up to 1024 channels); the channel loop is contiguous and vectorises;
rows and blocks run in parallel.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange

from .linear_scan import SqrtBoundDerivative
from .numba_support import Kernel, as_array, exp_nonpositive, expm1_nonpositive, sigmoid

BLOCK = 1024  # channels per work item: numba's per-slice cost is paid per step, so whole rows where possible
_MIN_SQRT_ARGUMENT = 1.0 / (4 * SqrtBoundDerivative.max_gradient**2)  # where d sqrt(u)/du is clipped


def _forward(x, gate_i, gate_r, log_a_scale, reset, h0, block, states):
    batch, length, channels = x.shape
    n_blocks = -(-channels // block)
    for job in prange(batch * n_blocks):
        row, c0 = job // n_blocks, (job % n_blocks) * block
        c1 = min(channels, c0 + block)
        h = h0[row, c0:c1].copy()
        scale = log_a_scale[c0:c1]
        for t in range(length):
            x_t, i_t, r_t = x[row, t, c0:c1], gate_i[row, t, c0:c1], gate_r[row, t, c0:c1]
            if reset[row, t]:
                for c in range(c1 - c0):
                    h[c] = i_t[c] * x_t[c]
            else:
                for c in range(c1 - c0):
                    log_a = r_t[c] * scale[c]
                    multiplier = np.sqrt(-expm1_nonpositive(2 * log_a))  # 1 - a^2 without cancellation as a -> 1
                    h[c] = exp_nonpositive(log_a) * h[c] + multiplier * i_t[c] * x_t[c]
            states[row, t, c0:c1] = h


def _backward(
    x, gate_i, gate_r, log_a_scale, reset, h0, states, grad_states, grad_final, block, min_sqrt_argument,
    grad_x, grad_i, grad_r, grad_scale, grad_h0,
):  # fmt: skip
    batch, length, channels = x.shape
    n_blocks = -(-channels // block)
    for job in prange(batch * n_blocks):
        row, c0 = job // n_blocks, (job % n_blocks) * block
        c1 = min(channels, c0 + block)
        scale = log_a_scale[c0:c1]
        grad_h = grad_final[row, c0:c1].copy()  # dL/dh_t, carried backwards in time
        grad_scale_total = np.zeros(c1 - c0, np.float64)
        for t in range(length - 1, -1, -1):
            x_t, i_t, r_t = x[row, t, c0:c1], gate_i[row, t, c0:c1], gate_r[row, t, c0:c1]
            h_prev = states[row, t - 1, c0:c1] if t > 0 else h0[row, c0:c1]
            grad_x_t, grad_i_t, grad_r_t = grad_x[row, t, c0:c1], grad_i[row, t, c0:c1], grad_r[row, t, c0:c1]
            grad_h += grad_states[row, t, c0:c1]
            if reset[row, t]:
                for c in range(c1 - c0):
                    grad_x_t[c] = grad_h[c] * i_t[c]
                    grad_i_t[c] = grad_h[c] * x_t[c]
                    grad_r_t[c] = 0.0
                    grad_h[c] = 0.0
                continue
            for c in range(c1 - c0):
                log_a = r_t[c] * scale[c]
                a = exp_nonpositive(log_a)
                u = -expm1_nonpositive(2 * log_a)  # 1 - a^2
                multiplier = np.sqrt(u)
                grad_multiplier = grad_h[c] * i_t[c] * x_t[c]
                grad_x_t[c] = grad_h[c] * i_t[c] * multiplier
                grad_i_t[c] = grad_h[c] * x_t[c] * multiplier
                # d sqrt(u)/du = 1 / (2 sqrt(max(u, min))), du/da = -2a, da/dlog_a = a
                grad_a = grad_h[c] * h_prev[c] - grad_multiplier * a / np.sqrt(max(u, min_sqrt_argument))
                grad_log_a = grad_a * a
                grad_r_t[c] = grad_log_a * scale[c]
                grad_scale_total[c] += grad_log_a * r_t[c]
                grad_h[c] *= a
        grad_h0[row, c0:c1] = grad_h
        grad_scale[row, c0:c1] = grad_scale_total


_forward_kernel, _backward_kernel = Kernel(_forward), Kernel(_backward)


def _operands(x, gate_i, gate_r, log_a_scale, reset, initial_state):
    return (
        as_array(x),
        as_array(gate_i),
        as_array(gate_r),
        as_array(log_a_scale),
        reset.detach().contiguous().numpy(),
        as_array(initial_state),
    )


def rglru_scan_forward(x, gate_i, gate_r, log_a_scale, reset, initial_state) -> torch.Tensor:
    """Same inputs as `rglru_scan_ref` (initial_state required) on CPU tensors -> states (b, l, d) fp32."""
    states = torch.empty(x.shape, dtype=torch.float32)
    _forward_kernel(x.numel(), *_operands(x, gate_i, gate_r, log_a_scale, reset, initial_state), BLOCK, states.numpy())
    return states


class RGLRUScanFunction(torch.autograd.Function):
    """Autograd wrapper: x, gate_i, gate_r (b, l, d); log_a_scale (d,); reset (b, l) bool; initial state
    (b, d) -> states (b, l, d), final state (b, d), fp32."""

    @staticmethod
    def forward(ctx, x, gate_i, gate_r, log_a_scale, reset, initial_state):
        states = rglru_scan_forward(x, gate_i, gate_r, log_a_scale, reset, initial_state)
        ctx.save_for_backward(x, gate_i, gate_r, log_a_scale, reset, initial_state, states)
        final_state = states[:, -1].clone() if states.shape[1] else initial_state.float().clone()
        return states, final_state

    @staticmethod
    def backward(ctx, grad_states, grad_final):
        x, gate_i, gate_r, log_a_scale, reset, initial_state, states = ctx.saved_tensors
        if grad_states is None:
            grad_states = torch.zeros_like(states)
        if grad_final is None:
            grad_final = torch.zeros(initial_state.shape, dtype=torch.float32)
        grad_x, grad_i, grad_r = (torch.empty_like(states) for _ in range(3))
        grad_scale = torch.empty(x.shape[0], x.shape[2], dtype=torch.float64)
        grad_h0 = torch.empty(initial_state.shape, dtype=torch.float32)
        _backward_kernel(
            x.numel(),
            *_operands(x, gate_i, gate_r, log_a_scale, reset, initial_state),
            states.numpy(),
            as_array(grad_states),
            as_array(grad_final),
            BLOCK,
            _MIN_SQRT_ARGUMENT,
            *(t.numpy() for t in (grad_x, grad_i, grad_r, grad_scale, grad_h0)),
        )
        return (
            grad_x.to(x.dtype),
            grad_i.to(gate_i.dtype),
            grad_r.to(gate_r.dtype),
            grad_scale.sum(0).to(log_a_scale.dtype),
            None,
            grad_h0.to(initial_state.dtype),
        )


# ---- the recurrent block's core fused: gate pre-activations in, gated output out ----
# y_t = h_t * act(y_pre_t),  i_t = sigmoid(g_i),  r_t = sigmoid(g_r),  h_t as above (Griffin eq. 1-4).
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
                states[row, t, c0:c1] = h
        final[row, c0:c1] = h


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
        grad_h0[row, c0:c1] = grad_h
        grad_scale[row, c0:c1] = grad_scale_total


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
        _MIN_SQRT_ARGUMENT,
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
