"""Zamba's shared attention block (layers/shared.py) for one decoded token, in two numba calls
around the attention itself.

Glossary: b batch, d model width, q / kv query and key-value widths, r LoRA rank, f MLP width.

Eagerly one `S` call is ~45 aten ops per token (the concat, two norms, six LoRA linears, the MLP
with exact GeLU, the output linear). Here:

    project        s = RMSNorm_2d([x | e]);  [q | k | v] = W s + B (A s)      one call
    (attention)    the KV cache write, softmax, o_proj in one call          ops/attention_decode_cpu.py
                   (with RoPE on the shared block, or a mask needed: `Attention.attend`)
    after          m = RMSNorm_d(a);  h = act(W_g m + g) * (W_u m + u),  [g | u] = B (A m);
                   t = W_t (W_down h)                                         one call

The LoRA deltas go through their rank-r middle (ops/decode_cpu.py `lora_add`): r (i + o) extra
multiply-adds per projection, against i o for a merged W + B A per call site, which would also hold
a full copy of the shared weights per `S` (zamba2 small: 8.3 MB of attention weights per site).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

from . import attention_decode_cpu
from .decode_cpu import (
    ACTIVATION_CODES,
    DecodeWeights,
    cached_entry,
    gemv_into,
    lora_add,
    lora_mlp_into,
    norm_views,
    rms_norm_into,
    viewable,
    weight_view,
)
from .numba_support import copy_into

_NO_ADAPTER = np.zeros((0, 0), np.float32)


@njit(fastmath=True, error_model="numpy", cache=True)
def _project(x, e, norm_weight, eps, offset, matrices, biases, downs, ups, out):
    batch, width = x.shape
    joined = np.empty((batch, 2 * width), np.float32)
    copy_into(joined[:, :width], x)
    copy_into(joined[:, width:], e)
    normed = np.empty_like(joined)
    rms_norm_into(joined, norm_weight, eps, offset, normed)
    column = 0
    for index in range(len(matrices)):
        gemv_into(matrices[index], biases[index], normed, out, column)
        if downs[index].size:
            lora_add(downs[index], ups[index], normed, out, column)
        column += matrices[index].shape[0]


@njit(fastmath=True, error_model="numpy", cache=True)
def _after_attention(
    a, norm_weight, eps, offset, activation, gate, gate_bias, up, up_bias, down, down_bias, lora_down, lora_up,
    linear, linear_bias, out,
):  # fmt: skip
    normed = np.empty_like(a)
    rms_norm_into(a, norm_weight, eps, offset, normed)
    mlp_out = np.empty((a.shape[0], down.shape[0]), np.float32)
    lora_mlp_into(normed, activation, gate, gate_bias, up, up_bias, down, down_bias, lora_down, lora_up, mlp_out)
    gemv_into(linear, linear_bias, mlp_out, out, 0)


def project(x: torch.Tensor, embeddings: torch.Tensor, weights: tuple) -> torch.Tensor:
    """x, embeddings (b, 1, d) -> [q | k | v] (b, 1, q + 2 kv) of RMSNorm([x | e]), LoRA deltas added."""
    batch = x.shape[0]
    out = np.empty((batch, weights[-1]), np.float32)
    _project(x.reshape(batch, -1).numpy(), embeddings.reshape(batch, -1).numpy(), *weights[:-1], out)
    return torch.from_numpy(out).view(batch, 1, -1)


def after_attention(attended: torch.Tensor, weights: tuple) -> torch.Tensor:
    """The attention's output a (b, 1, d) -> t = W_t MLP(RMSNorm(a)) (b, 1, d)."""
    batch = attended.shape[0]
    out = np.empty((batch, weights[-2].shape[0]), np.float32)
    _after_attention(attended.reshape(batch, -1).numpy(), *weights, out)
    return torch.from_numpy(out).view(batch, 1, -1)


def program_step(site, block, cache):
    """One `S` call site's step in a whole-step decode (ops/decode_program.py `_shared_token`): the views
    `project` and `after_attention` take around the block attention's cache arguments
    (ops/attention_decode_cpu.py `cache_arguments`); None where they cannot be viewed in place."""
    entry = cached_entry(site, lambda s: site_weights(block, s), block)
    attend = attention_decode_cpu.cache_arguments(block.attention, cache)
    if entry is None or attend is None:
        return None
    from .decode_program import ProgramStep

    held, (projection, after) = entry
    args = (projection[:-1], projection[-1], attend[1], after)
    return ProgramStep("shared", args, [held, attend[0]], attend[2], kv_cache=cache)


def _adapter_views(adapter) -> tuple:
    """(A, B) of a LoRA adapter nn.Sequential(Linear(i, r), Linear(r, o)); empty for None."""
    if adapter is None:
        return _NO_ADAPTER, _NO_ADAPTER
    return weight_view(adapter[0].weight), weight_view(adapter[1].weight)


def site_weights(block, site) -> tuple | None:
    """DecodeWeights, then the views `project` and `after_attention` take, for one `S` call site (its
    adapters and output linear) on its shared block; None unless every weight is float32, contiguous,
    on the CPU, the adapters have no bias and the MLP is gated with an activation `lora_mlp_into` computes."""
    attention, mlp = block.attention, block.mlp
    projections = (attention.q_proj, attention.k_proj, attention.v_proj)
    adapters = list(site.attention_adapters) if site.attention_adapters is not None else [None] * 3
    adapter_linears = [linear for adapter in [*adapters, site.mlp_adapter] if adapter is not None for linear in adapter]
    mlp_linears = (mlp.gate_proj, mlp.up_proj, mlp.down_proj)
    tensors = [
        block.input_norm.weight, block.ff_norm.weight, site.linear.weight, site.linear.bias,
        *(p for linear in (*projections, *mlp_linears, *adapter_linears) if linear is not None
          for p in (linear.weight, linear.bias)),
    ]  # fmt: skip
    has_bias = [linear.bias is not None for linear in projections]
    if (
        not viewable(*tensors)
        or any(linear.bias is not None for linear in adapter_linears)
        or any(has_bias) != all(has_bias)
        or mlp.gate_proj is None
        or mlp.activation_name not in ACTIVATION_CODES
    ):
        return None
    lora = [_adapter_views(adapter) for adapter in adapters]
    projection = (
        *norm_views(block.input_norm),
        tuple(weight_view(linear.weight) for linear in projections),
        tuple(weight_view(linear.bias) for linear in projections),
        tuple(down for down, _ in lora),
        tuple(up for _, up in lora),
        sum(linear.out_features for linear in projections),
    )
    after = (
        *norm_views(block.ff_norm),
        np.int64(ACTIVATION_CODES[mlp.activation_name]),
        *(weight_view(p) for linear in mlp_linears for p in (linear.weight, linear.bias)),
        *_adapter_views(site.mlp_adapter),
        weight_view(site.linear.weight),
        weight_view(site.linear.bias),
    )
    return DecodeWeights(tensors), projection, after
