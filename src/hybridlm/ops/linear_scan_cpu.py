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

import numpy as np
import torch
from numba import prange

from .linear_scan import SqrtBoundDerivative
from .numba_support import Kernel, as_array, copy_into, exp_nonpositive, expm1_nonpositive

BLOCK = 1024  # channels per work item: numba's per-slice cost is paid per step, so whole rows where possible
MIN_SQRT_ARGUMENT = 1.0 / (4 * SqrtBoundDerivative.max_gradient**2)  # where d sqrt(u)/du is clipped


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
            copy_into(states[row, t, c0:c1], h)


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
        copy_into(grad_h0[row, c0:c1], grad_h)
        copy_into(grad_scale[row, c0:c1], grad_scale_total)


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
            MIN_SQRT_ARGUMENT,
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
