"""The fused numba CPU kernels as torch custom ops, so that `torch.compile` sees them as single nodes.

Each kernel is a pair of ops, `hybridlm::<name>` and `hybridlm::<name>_backward`, with a fake
(meta) implementation that gives the output shapes and dtypes without running, and the forward's
autograd formula wired with `register_autograd` to the backward op. The arithmetic is the
kernels' own (selective_scan_cpu, causal_conv_cpu, linear_scan_cpu, modal_cpu, ssd_cpu, and
ssd_mixer_cpu composing the Mamba-2 ones): the backward ops call the existing
`autograd.Function.backward` on a plain context holding the saved tensors (ssd_cpu's and
ssd_mixer_cpu's backward functions directly). Outputs are made
contiguous so that real and fake outputs agree on strides. Nothing here logs or keeps Python
state: the traced path is these calls only. The operands reach numba through
`numba_support.as_array`, which never calls `Tensor.numpy()` on tensors that require grad.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import Tensor
from torch.library import custom_op, register_autograd, register_fake

from . import rglru_gated_cpu, ssd_mixer_cpu
from .causal_conv_cpu import CausalConv1dFunction, causal_conv1d_forward
from .gated_norm_cpu import gated_rms_norm_backward as gated_rms_norm_backward_kernel
from .gated_norm_cpu import gated_rms_norm_forward
from .linear_scan_cpu import RGLRUScanFunction, rglru_scan_forward
from .modal_cpu import CHUNK as MODAL_CHUNK
from .modal_cpu import ModalRecurrenceFunction, modal_recurrence_forward
from .selective_scan_cpu import CHUNK as SCAN_CHUNK
from .selective_scan_cpu import SelectiveScanFunction, selective_scan_forward
from .ssd_cpu import CHUNK as SSD_CHUNK
from .ssd_cpu import padded_shape as ssd_padded_shape
from .ssd_cpu import ssd_backward as ssd_backward_kernel
from .ssd_cpu import ssd_forward


# ---- Mamba-1 selective scan (x, dt, z (b, l, d); A (d, n); B, C (b, l, g, n); D (d,); h0 (b, d, n)) ----
@custom_op("hybridlm::selective_scan", mutates_args=(), device_types="cpu")
def selective_scan(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, z: Tensor, initial_state: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """out (b, l, d), final state (b, d, n), chunk checkpoints (b, ceil(l/64), n, d); all fp32."""
    out, final_state, checkpoints = selective_scan_forward(x, dt, A, B, C, D, z, initial_state, True)
    return out, final_state.contiguous(), checkpoints


@register_fake("hybridlm::selective_scan")
def _(x, dt, A, B, C, D, z, initial_state):
    batch, length, channels = x.shape
    d_state = A.shape[1]
    n_chunks = (length + SCAN_CHUNK - 1) // SCAN_CHUNK
    return (
        x.new_empty(batch, length, channels, dtype=torch.float32),
        x.new_empty(batch, channels, d_state, dtype=torch.float32),
        x.new_empty(batch, n_chunks, d_state, channels, dtype=torch.float32),
    )


@custom_op("hybridlm::selective_scan_backward", mutates_args=(), device_types="cpu")
def selective_scan_backward(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor,
    z: Tensor,
    checkpoints: Tensor,
    grad_out: Tensor,
    grad_final: Tensor,
) -> list[Tensor]:
    """Gradients of x, dt, A, B, C, D, z (each in its input's dtype) and of the initial state (fp32)."""
    saved = (x, dt, A, B, C, D, z, checkpoints.detach())  # an activation: numpy() may view it
    ctx = SimpleNamespace(saved_tensors=saved, initial_dtype=torch.float32)
    return [grad.contiguous() for grad in SelectiveScanFunction.backward(ctx, grad_out, grad_final)]


@register_fake("hybridlm::selective_scan_backward")
def _(x, dt, A, B, C, D, z, checkpoints, grad_out, grad_final):
    grads = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in (x, dt, A, B, C, D, z)]
    return grads + [grad_final.new_empty(grad_final.shape, dtype=torch.float32)]


def _scan_setup(ctx, inputs, output):
    x, dt, A, B, C, D, z, initial_state = inputs
    ctx.save_for_backward(x, dt, A, B, C, D, z, output[2])
    ctx.state_dtype = initial_state.dtype


def _scan_backward(ctx, grad_out, grad_final, _grad_checkpoints):
    x, dt, A, B, C, D, z, checkpoints = ctx.saved_tensors
    if grad_out is None:
        grad_out = x.new_zeros(x.shape, dtype=torch.float32)
    if grad_final is None:
        grad_final = x.new_zeros(x.shape[0], x.shape[2], A.shape[1], dtype=torch.float32)
    grads = selective_scan_backward(x, dt, A, B, C, D, z, checkpoints, grad_out, grad_final)
    return (*grads[:7], grads[7].to(ctx.state_dtype))


register_autograd("hybridlm::selective_scan", _scan_backward, setup_context=_scan_setup)


# ---- depthwise causal conv (x (b, l, c), weight (c, 1, k), bias (c,), state (b, c, k-1)), SiLU optional ----
@custom_op("hybridlm::causal_conv1d", mutates_args=(), device_types="cpu")
def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None, state: Tensor | None, silu: bool) -> Tensor:
    """y (b, l, c) fp32."""
    return causal_conv1d_forward(x, weight, bias, state, silu)


@register_fake("hybridlm::causal_conv1d")
def _(x, weight, bias, state, silu):
    return x.new_empty(x.shape, dtype=torch.float32)


@custom_op("hybridlm::causal_conv1d_backward", mutates_args=(), device_types="cpu")
def causal_conv1d_backward(
    x: Tensor, weight: Tensor, bias: Tensor | None, state: Tensor | None, silu: bool, grad_out: Tensor
) -> list[Tensor]:
    """Gradients of x, weight, bias and state; an empty tensor where bias or state is None."""
    ctx = SimpleNamespace(saved_tensors=(x, weight, bias, state), silu=silu)
    grads = CausalConv1dFunction.backward(ctx, grad_out)[:4]
    return [x.new_empty(0) if grad is None else grad.contiguous() for grad in grads]


@register_fake("hybridlm::causal_conv1d_backward")
def _(x, weight, bias, state, silu, grad_out):
    return [x.new_empty(0) if t is None else torch.empty_like(t) for t in (x, weight, bias, state)]


def _conv_setup(ctx, inputs, output):
    x, weight, bias, state, silu = inputs
    ctx.save_for_backward(x, weight, bias, state)
    ctx.silu = silu


def _conv_backward(ctx, grad_out):
    x, weight, bias, state = ctx.saved_tensors
    grad_x, grad_weight, grad_bias, grad_state = causal_conv1d_backward(x, weight, bias, state, ctx.silu, grad_out)
    return grad_x, grad_weight, None if bias is None else grad_bias, None if state is None else grad_state, None


register_autograd("hybridlm::causal_conv1d", _conv_backward, setup_context=_conv_setup)


# ---- RG-LRU (x, gate_i, gate_r (b, l, d); log_a_scale (d,); reset (b, l) bool; h0 (b, d)) ----
@custom_op("hybridlm::rglru_scan", mutates_args=(), device_types="cpu")
def rglru_scan(
    x: Tensor, gate_i: Tensor, gate_r: Tensor, log_a_scale: Tensor, reset: Tensor, initial_state: Tensor
) -> tuple[Tensor, Tensor]:
    """All states (b, l, d) and the last (b, d), fp32."""
    states = rglru_scan_forward(x, gate_i, gate_r, log_a_scale, reset, initial_state)
    return states, (states[:, -1] if states.shape[1] else initial_state.float()).clone()


@register_fake("hybridlm::rglru_scan")
def _(x, gate_i, gate_r, log_a_scale, reset, initial_state):
    return x.new_empty(x.shape, dtype=torch.float32), x.new_empty(initial_state.shape, dtype=torch.float32)


@custom_op("hybridlm::rglru_scan_backward", mutates_args=(), device_types="cpu")
def rglru_scan_backward(
    x: Tensor,
    gate_i: Tensor,
    gate_r: Tensor,
    log_a_scale: Tensor,
    reset: Tensor,
    initial_state: Tensor,
    states: Tensor,
    grad_states: Tensor,
    grad_final: Tensor,
) -> list[Tensor]:
    """Gradients of x, gate_i, gate_r, log_a_scale and the initial state, in their inputs' dtypes."""
    ctx = SimpleNamespace(saved_tensors=(x, gate_i, gate_r, log_a_scale, reset, initial_state, states.detach()))
    grads = RGLRUScanFunction.backward(ctx, grad_states, grad_final)
    return [grad.contiguous() for grad in grads if grad is not None]


@register_fake("hybridlm::rglru_scan_backward")
def _(x, gate_i, gate_r, log_a_scale, reset, initial_state, states, grad_states, grad_final):
    return [torch.empty_like(t) for t in (x, gate_i, gate_r, log_a_scale, initial_state)]


def _rglru_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs, output[0])


def _rglru_backward(ctx, grad_states, grad_final):
    x, gate_i, gate_r, log_a_scale, reset, initial_state, states = ctx.saved_tensors
    if grad_states is None:
        grad_states = torch.zeros_like(states)
    if grad_final is None:
        grad_final = torch.zeros(initial_state.shape, dtype=torch.float32)
    grads = rglru_scan_backward(x, gate_i, gate_r, log_a_scale, reset, initial_state, states, grad_states, grad_final)
    return (*grads[:4], None, grads[4])


register_autograd("hybridlm::rglru_scan", _rglru_backward, setup_context=_rglru_setup)


# ---- Hyena modal recurrence (u (b, l, d) real; poles, residue (d, m) complex; state (b, d, m) complex) ----
@custom_op("hybridlm::modal_recurrence", mutates_args=(), device_types="cpu")
def modal_recurrence(u: Tensor, poles: Tensor, residue: Tensor, initial_state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """y (b, l, d) fp32, the final state (b, d, m) and chunk checkpoints, complex128."""
    return modal_recurrence_forward(u, poles, residue, initial_state, True)


@register_fake("hybridlm::modal_recurrence")
def _(u, poles, residue, initial_state):
    batch, length, channels = u.shape
    n_chunks = (length + MODAL_CHUNK - 1) // MODAL_CHUNK
    state_dtype = torch.complex128
    return (
        u.new_empty(batch, length, channels, dtype=torch.float32),
        u.new_empty(batch, *poles.shape, dtype=state_dtype),
        u.new_empty(batch, n_chunks, *poles.shape, dtype=state_dtype),
    )


@custom_op("hybridlm::modal_recurrence_backward", mutates_args=(), device_types="cpu")
def modal_recurrence_backward(
    u: Tensor, poles: Tensor, residue: Tensor, checkpoints: Tensor, grad_out: Tensor, grad_final: Tensor
) -> list[Tensor]:
    """Gradients of u, poles, residue (their dtypes) and the initial state (complex128)."""
    ctx = SimpleNamespace(saved_tensors=(u, poles, residue, checkpoints.detach()), state_dtype=torch.complex128)
    return [grad.contiguous() for grad in ModalRecurrenceFunction.backward(ctx, grad_out, grad_final)]


@register_fake("hybridlm::modal_recurrence_backward")
def _(u, poles, residue, checkpoints, grad_out, grad_final):
    grads = [torch.empty_like(t) for t in (u, poles, residue)]
    return grads + [grad_final.new_empty(grad_final.shape, dtype=torch.complex128)]


def _modal_setup(ctx, inputs, output):
    u, poles, residue, initial_state = inputs
    ctx.save_for_backward(u, poles, residue, output[2])
    ctx.state_dtype = initial_state.dtype


def _modal_backward(ctx, grad_out, grad_final, _grad_checkpoints):
    u, poles, residue, checkpoints = ctx.saved_tensors
    if grad_out is None:
        grad_out = u.new_zeros(u.shape, dtype=torch.float32)
    if grad_final is None:
        grad_final = u.new_zeros(u.shape[0], *poles.shape, dtype=torch.complex128)
    grads = modal_recurrence_backward(u, poles, residue, checkpoints, grad_out, grad_final)
    return (*grads[:3], grads[3].to(ctx.state_dtype))


register_autograd("hybridlm::modal_recurrence", _modal_backward, setup_context=_modal_setup)


# ---- RG-LRU block core (x, y_pre (b, l, d); gate weights (h, w, w), biases (h, w); log_a_scale (d,);
# reset (b, l) bool; h0 (b, d)): out = h * act(y_pre) ----
@custom_op("hybridlm::rglru_gated", mutates_args=(), device_types="cpu")
def rglru_gated(
    x: Tensor,
    y_pre: Tensor,
    input_gate_weight: Tensor,
    input_gate_bias: Tensor,
    recurrent_gate_weight: Tensor,
    recurrent_gate_bias: Tensor,
    log_a_scale: Tensor,
    reset: Tensor,
    initial_state: Tensor,
    activation: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """out (b, l, d), the final state (b, d), all states (b, l, d), gate pre-activations (h, b l, 2w); fp32."""
    return rglru_gated_cpu.rglru_gated_forward(
        x, y_pre, input_gate_weight, input_gate_bias, recurrent_gate_weight, recurrent_gate_bias,
        log_a_scale, reset, initial_state, activation, keep=True,
    )  # fmt: skip


@register_fake("hybridlm::rglru_gated")
def _(x, y_pre, input_gate_weight, input_gate_bias, recurrent_gate_weight, recurrent_gate_bias, *rest):
    batch, length, channels = x.shape
    heads, block = input_gate_weight.shape[:2]
    return (
        x.new_empty(x.shape, dtype=torch.float32),
        x.new_empty(batch, channels, dtype=torch.float32),
        x.new_empty(x.shape, dtype=torch.float32),
        x.new_empty(heads, batch * length, 2 * block, dtype=torch.float32),
    )


@custom_op("hybridlm::rglru_gated_backward", mutates_args=(), device_types="cpu")
def rglru_gated_backward(
    x: Tensor,
    y_pre: Tensor,
    input_gate_weight: Tensor,
    recurrent_gate_weight: Tensor,
    log_a_scale: Tensor,
    reset: Tensor,
    initial_state: Tensor,
    states: Tensor,
    gates: Tensor,
    grad_out: Tensor,
    grad_final: Tensor,
    activation: str,
) -> list[Tensor]:
    """Gradients of x, y_pre, both gates' weights and biases, log_a_scale and the initial state (fp32)."""
    return list(rglru_gated_cpu.rglru_gated_backward(
        x, y_pre, input_gate_weight, recurrent_gate_weight, log_a_scale, reset, initial_state,
        states.detach(), gates.detach(), grad_out, grad_final, activation,
    ))  # fmt: skip


@register_fake("hybridlm::rglru_gated_backward")
def _(x, y_pre, input_gate_weight, recurrent_gate_weight, log_a_scale, reset, initial_state, *rest):
    heads, block = input_gate_weight.shape[:2]
    weights = [x.new_empty(heads, block, block, dtype=torch.float32) for _ in range(2)]
    biases = [x.new_empty(heads, block, dtype=torch.float32) for _ in range(2)]
    like = [x.new_empty(t.shape, dtype=torch.float32) for t in (x, y_pre)]
    scale_and_state = [x.new_empty(t.shape, dtype=torch.float32) for t in (log_a_scale, initial_state)]
    return [*like, weights[0], biases[0], weights[1], biases[1], *scale_and_state]


def _gated_setup(ctx, inputs, output):
    x, y_pre, input_gate_weight, _, recurrent_gate_weight, _, log_a_scale, reset, initial_state, activation = inputs
    ctx.save_for_backward(
        x, y_pre, input_gate_weight, recurrent_gate_weight, log_a_scale, reset, initial_state, output[2], output[3]
    )
    ctx.activation = activation
    ctx.dtypes = [t.dtype for t in inputs[:7]] + [initial_state.dtype]


def _gated_backward(ctx, grad_out, grad_final, _grad_states, _grad_gates):
    saved = ctx.saved_tensors
    initial_state, states = saved[6], saved[7]
    if grad_out is None:
        grad_out = torch.zeros_like(states)
    if grad_final is None:
        grad_final = torch.zeros(initial_state.shape, dtype=torch.float32)
    grads = rglru_gated_backward(*saved, grad_out, grad_final, ctx.activation)
    grads = [grad.to(dtype) for grad, dtype in zip(grads, ctx.dtypes)]
    return (*grads[:7], None, grads[7], None)


register_autograd("hybridlm::rglru_gated", _gated_backward, setup_context=_gated_setup)


# ---- Mamba-2 SSD (x (b, l, h, p); dt (b, l, h); A, D (h,); B, C (b, l, g, n); h0 (b, h, p, n)) ----
@custom_op("hybridlm::ssd", mutates_args=(), device_types="cpu")
def ssd(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, initial_state: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """y (b, l, h, p), final state (b, h, p, n), the states entering each chunk of 64 tokens and the
    final one (b, ceil(l/64) + 1, h, n', p') (ssd_cpu.padded_shape); all fp32."""
    y, final_state, checkpoints = ssd_forward(x, dt, A, B, C, D, initial_state, True)
    return y, final_state.contiguous(), checkpoints


@register_fake("hybridlm::ssd")
def _(x, dt, A, B, C, D, initial_state):
    batch, length, heads, head_dim = x.shape
    d_state = B.shape[3]
    n_chunks = (length + SSD_CHUNK - 1) // SSD_CHUNK
    return (
        x.new_empty(batch, length, heads, head_dim, dtype=torch.float32),
        x.new_empty(batch, heads, head_dim, d_state, dtype=torch.float32),
        x.new_empty(batch, n_chunks + 1, heads, *ssd_padded_shape(d_state, head_dim), dtype=torch.float32),
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
    n_chunks = (length + SSD_CHUNK - 1) // SSD_CHUNK
    return (
        projected.new_empty(batch, length, d_inner, dtype=torch.float32),
        projected.new_empty(batch, length, conv_dim, dtype=torch.float32),
        projected.new_empty(batch, length, heads, head_dim, dtype=torch.float32),
        projected.new_empty(batch, n_chunks + 1, heads, *ssd_padded_shape(d_state, head_dim), dtype=torch.float32),
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
