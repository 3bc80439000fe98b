"""The fused numba CPU kernels as torch custom ops, so that `torch.compile` sees them as single nodes.

Each kernel is a pair of ops, `hybridlm::<name>` and `hybridlm::<name>_backward`, with a fake
(meta) implementation that gives the output shapes and dtypes without running, and the forward's
autograd formula wired with `register_autograd` to the backward op. The arithmetic is the
kernels' own (selective_scan_cpu, causal_conv_cpu, linear_scan_cpu, modal_cpu; the Mamba-2 ones,
ssd_cpu and ssd_mixer_cpu, in ops/custom_ops_mamba2.py): the backward ops call the existing
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

from . import rglru_gated_cpu
from .causal_conv_cpu import CausalConv1dFunction, causal_conv1d_forward
from .custom_ops_mamba2 import gated_rms_norm, ssd, ssd_mixer  # noqa: F401 (re-exported: the Mamba-2 ops)
from .linear_scan_cpu import RGLRUScanFunction, rglru_scan_forward
from .modal_cpu import CHUNK as MODAL_CHUNK
from .modal_cpu import ModalRecurrenceFunction, modal_recurrence_forward
from .selective_scan_cpu import CHUNK as SCAN_CHUNK
from .selective_scan_cpu import SelectiveScanFunction, selective_scan_forward


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
