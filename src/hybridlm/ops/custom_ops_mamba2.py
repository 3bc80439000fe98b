"""The Mamba-2 kernels as torch custom ops (see ops/custom_ops.py, which re-exports them): the SSD
recurrence, the gated RMSNorm and the mixer between the projections (ssd_cpu, gated_norm_cpu,
ssd_mixer_cpu), each with its fake implementation and its autograd formula wired to a backward op.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.library import custom_op, register_autograd, register_fake

from . import ssd_mixer_cpu
from .gated_norm_cpu import gated_rms_norm_backward as gated_rms_norm_backward_kernel
from .gated_norm_cpu import gated_rms_norm_forward
from .ssd_cpu import CHUNK as SSD_CHUNK
from .ssd_cpu import padded_shape as ssd_padded_shape
from .ssd_cpu import ssd_backward as ssd_backward_kernel
from .ssd_cpu import ssd_forward


# ---- Mamba-2 SSD (x (b, l, h, p); dt (b, l, h); A, D (h,); B, C (b, l, g, n); h0 (b, h, p, n)) ----
@custom_op("hybridlm::ssd", mutates_args=(), device_types="cpu")
def ssd(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, initial_state: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """y (b, l, h, p), final state (b, h, p, n), the states entering each chunk of 64 tokens and the
    final one (b, ceil(l/64) + 1, h, n', p') (ssd_cpu.padded_shape); all fp32."""
    y, final_state, checkpoints = ssd_forward(x, dt, A, B, C, D, initial_state, True)
    return y, final_state.contiguous(), checkpoints


def _fake_chunk_states(like: Tensor, batch: int, length: int, heads: int, head_dim: int, d_state: int) -> Tensor:
    """The states an SSD forward saves at each chunk boundary (b, chunks + 1, h, padded p x n), fp32."""
    n_chunks = (length + SSD_CHUNK - 1) // SSD_CHUNK
    return like.new_empty(batch, n_chunks + 1, heads, *ssd_padded_shape(d_state, head_dim), dtype=torch.float32)


@register_fake("hybridlm::ssd")
def _(x, dt, A, B, C, D, initial_state):
    batch, length, heads, head_dim = x.shape
    d_state = B.shape[3]
    return (
        x.new_empty(batch, length, heads, head_dim, dtype=torch.float32),
        x.new_empty(batch, heads, head_dim, d_state, dtype=torch.float32),
        _fake_chunk_states(x, batch, length, heads, head_dim, d_state),
    )


@custom_op("hybridlm::ssd_backward", mutates_args=(), device_types="cpu")
def ssd_backward(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor,
    checkpoints: Tensor,
    grad_y: Tensor,
    grad_final: Tensor,
) -> list[Tensor]:
    """Gradients of x, dt, A, B, C, D (each in its input's dtype) and of the initial state (fp32)."""
    grads = ssd_backward_kernel(x, dt, A, B, C, D, checkpoints.detach(), grad_y, grad_final)
    return [grad.contiguous() for grad in grads]


@register_fake("hybridlm::ssd_backward")
def _(x, dt, A, B, C, D, checkpoints, grad_y, grad_final):
    grads = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in (x, dt, A, B, C, D)]
    return grads + [grad_final.new_empty(grad_final.shape, dtype=torch.float32)]


def _ssd_setup(ctx, inputs, output):
    x, dt, A, B, C, D, initial_state = inputs
    ctx.save_for_backward(x, dt, A, B, C, D, output[2])
    ctx.state_dtype = initial_state.dtype
    ctx.set_materialize_grads(False)  # no zero-filled gradient for the checkpoints (or an unused output)


def _ssd_backward(ctx, grad_y, grad_final, _grad_checkpoints):
    x, dt, A, B, C, D, checkpoints = ctx.saved_tensors
    if grad_y is None:
        grad_y = x.new_zeros(x.shape, dtype=torch.float32)
    if grad_final is None:
        grad_final = x.new_zeros(x.shape[0], x.shape[2], x.shape[3], B.shape[3], dtype=torch.float32)
    grads = ssd_backward(x, dt, A, B, C, D, checkpoints, grad_y, grad_final)
    return (*grads[:6], grads[6].to(ctx.state_dtype))


register_autograd("hybridlm::ssd", _ssd_backward, setup_context=_ssd_setup)


# ---- Mamba-2 gated RMSNorm (y, z (..., d); weight (d,)) ----
@custom_op("hybridlm::gated_rms_norm", mutates_args=(), device_types="cpu")
def gated_rms_norm(y: Tensor, z: Tensor, weight: Tensor, n_groups: int, eps: float) -> Tensor:
    """RMSNorm_g(y * SiLU(z)) * weight, fp32."""
    return gated_rms_norm_forward(y, z, weight, n_groups, eps)


@register_fake("hybridlm::gated_rms_norm")
def _(y, z, weight, n_groups, eps):
    return y.new_empty(y.shape, dtype=torch.float32)


@custom_op("hybridlm::gated_rms_norm_backward", mutates_args=(), device_types="cpu")
def gated_rms_norm_backward(
    y: Tensor, z: Tensor, weight: Tensor, n_groups: int, eps: float, grad_out: Tensor
) -> list[Tensor]:
    """Gradients of y, z and weight, in their dtypes."""
    return gated_rms_norm_backward_kernel(y, z, weight, n_groups, eps, grad_out)


@register_fake("hybridlm::gated_rms_norm_backward")
def _(y, z, weight, n_groups, eps, grad_out):
    return [torch.empty_like(t, memory_format=torch.contiguous_format) for t in (y, z, weight)]


def _gated_norm_setup(ctx, inputs, output):
    y, z, weight, n_groups, eps = inputs
    ctx.save_for_backward(y, z, weight)
    ctx.n_groups, ctx.eps = n_groups, eps


def _gated_norm_backward(ctx, grad_out):
    y, z, weight = ctx.saved_tensors
    grad_y, grad_z, grad_weight = gated_rms_norm_backward(y, z, weight, ctx.n_groups, ctx.eps, grad_out)
    return grad_y, grad_z, grad_weight, None, None


register_autograd("hybridlm::gated_rms_norm", _gated_norm_backward, setup_context=_gated_norm_setup)


# ---- the Mamba-2 mixer between its projections (projected (b, l, d_in + conv channels + h); conv_weight
# (channels, 1, k), conv_bias (channels,) or None; dt_bias, A_log, D (h,); norm_weight (d_in,)) ----
@custom_op("hybridlm::ssd_mixer", mutates_args=(), device_types="cpu")
def ssd_mixer(
    projected: Tensor,
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    dt_bias: Tensor,
    A_log: Tensor,
    D: Tensor,
    norm_weight: Tensor,
    n_groups: int,
    dt_low: float,
    dt_high: float,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """normed (b, l, d_in), the conv's output (b, l, channels), y (b, l, h, p) and the SSD's chunk
    checkpoints (ssd_mixer_cpu.ssd_mixer_forward); all fp32."""
    return ssd_mixer_cpu.ssd_mixer_forward(
        projected, conv_weight, conv_bias, dt_bias, A_log, D, norm_weight, n_groups, dt_low, dt_high, eps
    )


@register_fake("hybridlm::ssd_mixer")
def _(projected, conv_weight, conv_bias, dt_bias, A_log, D, norm_weight, n_groups, dt_low, dt_high, eps):
    d_inner, conv_dim, heads, head_dim, d_state = ssd_mixer_cpu.widths(projected, conv_weight, dt_bias, n_groups)
    batch, length = projected.shape[:2]
    return (
        projected.new_empty(batch, length, d_inner, dtype=torch.float32),
        projected.new_empty(batch, length, conv_dim, dtype=torch.float32),
        projected.new_empty(batch, length, heads, head_dim, dtype=torch.float32),
        _fake_chunk_states(projected, batch, length, heads, head_dim, d_state),
    )


@custom_op("hybridlm::ssd_mixer_backward", mutates_args=(), device_types="cpu")
def ssd_mixer_backward(
    projected: Tensor,
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    dt_bias: Tensor,
    A_log: Tensor,
    D: Tensor,
    norm_weight: Tensor,
    conv_out: Tensor,
    y: Tensor,
    checkpoints: Tensor,
    grad_normed: Tensor,
    n_groups: int,
    dt_low: float,
    dt_high: float,
    eps: float,
) -> list[Tensor]:
    """Gradients of projected (fp32), conv_weight, conv_bias (empty without one), dt_bias, A_log, D
    and norm_weight (their dtypes)."""
    grads = ssd_mixer_cpu.ssd_mixer_backward(
        projected, conv_weight, conv_bias, dt_bias, A_log, D, norm_weight,
        conv_out.detach(), y.detach(), checkpoints.detach(), grad_normed, n_groups, dt_low, dt_high, eps,
    )  # fmt: skip
    return [projected.new_empty(0) if grad is None else grad.contiguous() for grad in grads]


@register_fake("hybridlm::ssd_mixer_backward")
def _(projected, conv_weight, conv_bias, dt_bias, A_log, D, norm_weight, *rest):
    grads = [torch.empty_like(t) for t in (conv_weight, conv_bias, dt_bias, A_log, D, norm_weight) if t is not None]
    if conv_bias is None:
        grads.insert(1, projected.new_empty(0))
    return [projected.new_empty(projected.shape, dtype=torch.float32), *grads]


def _ssd_mixer_setup(ctx, inputs, output):
    projected, conv_weight, conv_bias, dt_bias, A_log, D, norm_weight, n_groups, dt_low, dt_high, eps = inputs
    ctx.save_for_backward(projected, conv_weight, conv_bias, dt_bias, A_log, D, norm_weight, *output[1:])
    ctx.options = (n_groups, dt_low, dt_high, eps)
    ctx.projected_dtype = projected.dtype
    ctx.set_materialize_grads(False)  # the saved outputs get no gradient


def _ssd_mixer_backward(ctx, grad_normed, _grad_conv_out, _grad_y, _grad_checkpoints):
    projected, conv_weight, conv_bias, *saved = ctx.saved_tensors
    if grad_normed is None:
        return (None,) * 11
    grads = ssd_mixer_backward(projected, conv_weight, conv_bias, *saved, grad_normed, *ctx.options)
    grad_projected, grad_conv_weight, grad_conv_bias, *rest = grads
    return (
        grad_projected.to(ctx.projected_dtype),
        grad_conv_weight,
        None if conv_bias is None else grad_conv_bias,
        *rest,
        None,
        None,
        None,
        None,
    )


register_autograd("hybridlm::ssd_mixer", _ssd_mixer_backward, setup_context=_ssd_mixer_setup)
