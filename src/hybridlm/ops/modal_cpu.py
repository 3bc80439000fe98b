"""Hyena's modal recurrence (the decode form of the long filter) as a numba kernel, forward and backward.

Glossary: b batch, l tokens, d channels, m modes (complex poles) per channel, q checkpoint chunk.

Computes exactly `fftconv.modal_recurrence_ref` on complex128 arrays (`fftconv.STATE_DTYPE`, see
its "Precision") in the cache's own layout, so a decoding step converts nothing:
    s_t = p * s_{t-1} + u_t          (b, d, m) complex
    y_t = Re sum_m R_m s_t[m]        (b, d)
Decoding feeds one token per call, so the kernel runs serially (no thread start-up per token).
For long inputs the forward keeps the state entering every chunk of q steps and the backward
recomputes each chunk's states before the reverse recurrence. Gradients of complex tensors are
torch's convention, dL/dRe + i dL/dIm; with G = dL/ds in that form:
    dL/ds_{t-1} = conj(p) G,  dL/dp += G conj(s_{t-1}),  dL/du_t = Re G,
    and y_t adds gy conj(R) to G and gy conj(s_t) to dL/dR.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

from .fftconv import STATE_DTYPE
from .numba_support import copy_into

CHUNK = 64


@njit(fastmath=True, error_model="numpy", cache=True)
def _forward_kernel(u, poles, residue, state, chunk, out, checkpoints, keep_checkpoints):
    """u (b, l, d) float32; poles, residue (d, m); state (b, d, m), updated in place; out (b, l, d)."""
    batch, length, channels = u.shape
    n_modes = poles.shape[1]
    for row in range(batch):
        for t in range(length):
            if keep_checkpoints and t % chunk == 0:
                copy_into(checkpoints[row, t // chunk], state[row])
            for c in range(channels):
                y = 0.0
                for k in range(n_modes):
                    s = poles[c, k] * state[row, c, k] + u[row, t, c]
                    state[row, c, k] = s
                    y += (residue[c, k] * s).real
                out[row, t, c] = y


@njit(fastmath=True, error_model="numpy", cache=True)
def _backward_kernel(u, poles, residue, checkpoints, grad_out, grad_state, chunk, grad_u, grad_poles, grad_residue):
    """grad_state (b, d, m) holds dL/d(final state) and becomes dL/d(initial state), in place."""
    batch, length, channels = u.shape
    n_modes = poles.shape[1]
    n_chunks = checkpoints.shape[1]
    states = np.empty((chunk + 1, channels, n_modes), np.complex128)  # s_{t0-1} .. s_{t1-1}
    for row in range(batch):
        for chunk_index in range(n_chunks - 1, -1, -1):
            t0 = chunk_index * chunk
            t1 = min(length, t0 + chunk)
            copy_into(states[0], checkpoints[row, chunk_index])
            for t in range(t0, t1):
                for c in range(channels):
                    for k in range(n_modes):
                        states[t - t0 + 1, c, k] = poles[c, k] * states[t - t0, c, k] + u[row, t, c]
            for t in range(t1 - 1, t0 - 1, -1):
                i = t - t0
                for c in range(channels):
                    g_y = grad_out[row, t, c]
                    g_u = 0.0
                    for k in range(n_modes):
                        grad_residue[c, k] += g_y * np.conj(states[i + 1, c, k])
                        g = grad_state[row, c, k] + g_y * np.conj(residue[c, k])
                        g_u += g.real
                        grad_poles[c, k] += g * np.conj(states[i, c, k])
                        grad_state[row, c, k] = g * np.conj(poles[c, k])
                    grad_u[row, t, c] = g_u


def _complex_array(t: torch.Tensor) -> np.ndarray:
    """A STATE_DTYPE, C-contiguous numpy view (or copy) of a CPU tensor, outside autograd."""
    t = t.detach().resolve_conj()
    if t.dtype != STATE_DTYPE:
        t = t.to(STATE_DTYPE)
    return t.contiguous().numpy()


def modal_recurrence_forward(u, poles, residue, initial_state, keep_checkpoints: bool = False):
    """Same contract as `modal_recurrence_ref` (initial_state required), on CPU tensors.

    Returns y (b, l, d) fp32, the final state (b, d, m) STATE_DTYPE and the chunk checkpoints."""
    batch, length, channels = u.shape
    state = initial_state.detach().to(STATE_DTYPE, copy=True).resolve_conj().contiguous()
    out = torch.empty(batch, length, channels, dtype=torch.float32)
    n_chunks = -(-length // CHUNK) if keep_checkpoints else 0
    checkpoints = torch.empty(batch, n_chunks, *poles.shape, dtype=STATE_DTYPE)
    _forward_kernel(
        u.detach().float().contiguous().numpy(),
        _complex_array(poles),
        _complex_array(residue),
        state.numpy(),
        CHUNK,
        out.numpy(),
        checkpoints.numpy(),
        keep_checkpoints,
    )
    return out, state, checkpoints


class ModalRecurrenceFunction(torch.autograd.Function):
    """Autograd wrapper: u (b, l, d) real; poles, residue (d, m) complex; initial state (b, d, m) complex.

    Returns y (b, l, d) fp32 and the final state (b, d, m) STATE_DTYPE."""

    @staticmethod
    def forward(ctx, u, poles, residue, initial_state):
        out, final_state, checkpoints = modal_recurrence_forward(u, poles, residue, initial_state, True)
        ctx.save_for_backward(u, poles, residue, checkpoints)
        ctx.state_dtype = initial_state.dtype
        return out, final_state

    @staticmethod
    def backward(ctx, grad_out, grad_final):
        u, poles, residue, checkpoints = ctx.saved_tensors
        batch, length, channels = u.shape
        if grad_out is None:
            grad_out = torch.zeros(batch, length, channels)
        if grad_final is None:
            grad_final = torch.zeros(batch, *poles.shape, dtype=STATE_DTYPE)
        grad_state = grad_final.detach().to(STATE_DTYPE, copy=True).resolve_conj().contiguous()
        grad_u = torch.empty(batch, length, channels, dtype=torch.float32)
        grad_poles, grad_residue = (torch.zeros(poles.shape, dtype=torch.complex128) for _ in range(2))
        _backward_kernel(
            u.detach().float().contiguous().numpy(),
            _complex_array(poles),
            _complex_array(residue),
            checkpoints.numpy(),
            grad_out.detach().float().contiguous().numpy(),
            grad_state.numpy(),
            CHUNK,
            grad_u.numpy(),
            grad_poles.numpy(),
            grad_residue.numpy(),
        )
        return (
            grad_u.to(u.dtype),
            grad_poles.to(poles.dtype),
            grad_residue.to(residue.dtype),
            grad_state.to(ctx.state_dtype),
        )
