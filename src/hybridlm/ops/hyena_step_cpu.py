"""One Hyena decoding step (layers/hyena.py), from the sub-layer's input to its output, in one numba call.

Glossary (layers/hyena.py): b batch, d model width, m modes per channel, k short conv width.

Through the layer's torch code one token is ~20 eager ops (in_proj, the conv update, the split and
gate, the pole powers, the modal recurrence kernel, the skip, out_proj). This kernel does the
same step for one token, in the same order (Hyena eq. 3 with N = 2, the modal long filter in its
recurrent form, s_t = p s_{t-1} + (k o v)_t):

    u_hat     = RMSNorm(u)
    [q, k, v] = conv(window, in_proj(u_hat))        the window (b, 3d, k-1) shifts in place
    s         = p s + k o v                         (b, d, m) complex128, in place
    z         = Re(R . s) + D o (k o v)             the recurrence summed in float64, then float32
    out       = out_proj(q o z)

It is the `hyena` step of a whole-step decode (ops/decode_program.py); the per-sub-layer path
keeps the layer's torch code around ops/modal_cpu.py's kernel.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

from .causal_conv_cpu import conv_token
from .decode_cpu import DecodeWeights, gemv_rows, norm_views, rms_norm_into, viewable, weight_view
from .fftconv import modal_poles


@njit(fastmath=True, error_model="numpy", cache=True)
def _sublayer_step(
    u, norm_weight, eps, offset, in_weight, in_bias, conv_state, conv_weight, conv_bias, poles, residue, D,
    modal_state, out_weight, out_bias, out,
):  # fmt: skip
    batch, width = u.shape
    normed = np.empty_like(u)
    rms_norm_into(u, norm_weight, eps, offset, normed)
    projected = np.empty((batch, 3 * width), np.float32)
    gemv_rows(in_weight, in_bias, normed, 0, projected, 0)
    qkv = np.empty(3 * width, np.float32)
    gated = np.empty((batch, width), np.float32)
    n_modes = poles.shape[1]
    for row in range(batch):
        for c in range(3 * width):
            qkv[c] = conv_token(conv_weight, conv_bias, conv_state, row, c, projected[row, c])
        for c in range(width):
            drive = qkv[width + c] * qkv[2 * width + c]  # k o v
            z = 0.0  # float64, as ops/modal_cpu.py sums it
            for mode in range(n_modes):
                s = poles[c, mode] * modal_state[row, c, mode] + drive
                modal_state[row, c, mode] = s
                z += (residue[c, mode] * s).real
            gated[row, c] = qkv[c] * (np.float32(z) + D[c] * drive)
    gemv_rows(out_weight, out_bias, gated, 0, out, 0)


def program_step(hyena, norm, state):
    """The Hyena sub-layer's step in a whole-step decode: its views, the poles p (d, m) and residues R
    as complex128 copies (they follow pole_rho's, pole_theta's and residue's in-place changes) and its
    states viewed in place; None unless every tensor is float32 (the modal state complex128),
    contiguous and on the CPU."""
    linears = (hyena.in_proj, hyena.out_proj)
    conv = hyena.short_conv
    tensors = [norm.weight, conv.weight, conv.bias, hyena.D, *(p for lin in linears for p in (lin.weight, lin.bias))]
    modal = state.modal
    if conv.bias is None or not viewable(*tensors, state.conv):
        return None
    if modal.dtype != torch.complex128 or not modal.is_contiguous() or modal.device.type != "cpu":
        return None
    from .decode_program import ProgramStep

    sources = (hyena.pole_rho, hyena.pole_theta, hyena.residue)
    with torch.no_grad():
        poles = modal_poles(*hyena.poles()).numpy()
        residue = torch.view_as_complex(hyena.residue.float()).to(torch.complex128).numpy()
    args = (
        *norm_views(norm), weight_view(hyena.in_proj.weight), weight_view(hyena.in_proj.bias), state.conv.numpy(),
        weight_view(conv.weight).reshape(conv.weight.shape[0], -1), weight_view(conv.bias), poles, residue,
        weight_view(hyena.D), modal.numpy(), weight_view(hyena.out_proj.weight), weight_view(hyena.out_proj.bias),
    )  # fmt: skip
    held = DecodeWeights([*tensors, *sources], derived_from=sources)
    return ProgramStep("hyena", args, [held], [(state, "conv"), (state, "modal")])
