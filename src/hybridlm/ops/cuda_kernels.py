"""Adapters to the CUDA kernels of `mamba_ssm` and `causal_conv1d`, used for CUDA tensors when installed.

Glossary: b batch, l tokens, d channels, n state size, g groups, h heads, p head dim, k conv width.

These packages take channels-first (b, d, l) inputs and B, C as (b, g, n, l); the adapters
translate from this library's (b, l, d) layout. Each returns None where the kernel does not
cover the call (an initial state mid-sequence, groups in the one-token update), and the caller
falls back to the torch path. None of this runs without a GPU; the tests skip it there.
"""

from __future__ import annotations

import importlib.util


def available() -> bool:
    """mamba_ssm imports (it needs a CUDA build of torch; its Mamba-1 kernel also needs
    MAMBA_KEEP_CUDA_BUILD=TRUE at install time, or `selective_scan_fn` raises when called)."""
    try:
        import mamba_ssm  # noqa: F401
    except Exception:  # ImportError, or an OSError/RuntimeError from a broken CUDA build
        return False
    return True


def selective_scan(x, dt, A, B, C, D, z, initial_state):
    """Mamba-1 scan with the gate folded in: (out (b, l, d), final state (b, d, n)) or None."""
    if initial_state is None:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        out, final_state = selective_scan_fn(
            x.transpose(1, 2),
            dt.transpose(1, 2),
            A,
            B.permute(0, 2, 3, 1),
            C.permute(0, 2, 3, 1),
            D,
            None if z is None else z.transpose(1, 2),
            return_last_state=True,
        )
        return out.transpose(1, 2), final_state
    if x.shape[1] == 1 and B.shape[2] == 1:  # one decoding step: Triton state update, in place on a copy
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update

        state = initial_state.float().clone()
        out = selective_state_update(
            state, x[:, 0], dt[:, 0], A, B[:, 0, 0], C[:, 0, 0], D, None if z is None else z[:, 0]
        )
        return out.unsqueeze(1), state
    return None


def ssd(x, dt, A, B, C, D, initial_state, chunk_size):
    """Mamba-2 chunked scan (Triton): (y (b, l, h, p), final state (b, h, p, n))."""
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    return mamba_chunk_scan_combined(
        x, dt, A, B, C, chunk_size, D=D, initial_states=initial_state, return_final_states=True
    )


def causal_conv1d(x, weight, bias, state, silu):
    """Depthwise causal conv from a zero window: y (b, l, d), or None when a state is carried in."""
    if state is not None or importlib.util.find_spec("causal_conv1d") is None:
        return None
    from causal_conv1d import causal_conv1d_fn

    y = causal_conv1d_fn(x.transpose(1, 2), weight.squeeze(1), bias, activation="silu" if silu else None)
    return y.transpose(1, 2)
