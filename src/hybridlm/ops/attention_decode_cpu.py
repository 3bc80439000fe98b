"""Fused CPU attention for one decoded token: KV-cache write, softmax attention and o_proj in one call.

Glossary: b batch, H query heads, H_kv key/value heads (a group of H / H_kv query heads shares one),
D head dim, S cache slots attended before the new token, d_out model width.

For each row and head, with q, k_new, v_new the new token's (RoPE-rotated) projections and k_j, v_j
the S cached keys and values the query may see (Vaswani et al. 2017, eq. 1, one query):

    s_j = scale q . k_j,   p = softmax([s_1 .. s_S, scale q . k_new]),   y = sum_j p_j v_j
    out = W_o y + b_o

then k_new, v_new and the position go into the cache's slot. Done as torch ops this is a cache
write, SDPA (its CPU flash kernel costs ~80 us per call at S ~ 40 here, far above the arithmetic),
views and o_proj's GEMV: ~0.2 ms per layer for ~0.1 ms of weight reads at the small preset. It
applies where no mask is needed (layers/attention.py `decode_token`): full attention or a window's
ring (full, or holding its first tokens in slots 0 .. length - 1), and no padding stored; otherwise
the layer's own path runs.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

from .decode_cpu import (
    DecodeWeights,
    cached_entry,
    cached_weights,
    gemv_into,
    projection_weights,
    viewable,
    weight_view,
)
from .numba_support import exp_nonpositive


@njit(fastmath=True, error_model="numpy", cache=True)
def _attend_token(
    qkv, keys, values, slot_positions, positions, attended, slot, heads, scale, o_weight, o_bias, out
):  # fmt: skip
    batch, kv_heads, _, head_dim = keys.shape
    group = heads // kv_heads
    y = np.empty((batch, heads * head_dim), np.float32)
    scores = np.empty(attended + 1, np.float32)
    for row in range(batch):
        for head in range(heads):
            kv_head = head // group
            q = qkv[row, head * head_dim : (head + 1) * head_dim]
            k_new = qkv[row, (heads + kv_head) * head_dim : (heads + kv_head + 1) * head_dim]
            v_new = qkv[row, (heads + kv_heads + kv_head) * head_dim : (heads + kv_heads + kv_head + 1) * head_dim]
            for j in range(attended):
                k_j = keys[row, kv_head, j]
                acc = np.float32(0.0)
                for c in range(head_dim):
                    acc += q[c] * k_j[c]
                scores[j] = acc * scale
            acc = np.float32(0.0)
            for c in range(head_dim):
                acc += q[c] * k_new[c]
            scores[attended] = acc * scale
            largest = scores.max()
            total = np.float32(0.0)
            for j in range(attended + 1):
                scores[j] = exp_nonpositive(scores[j] - largest)
                total += scores[j]
            out_head = y[row, head * head_dim : (head + 1) * head_dim]
            weight_new = scores[attended] / total
            for c in range(head_dim):
                out_head[c] = weight_new * v_new[c]
            for j in range(attended):
                p_j = scores[j] / total
                v_j = values[row, kv_head, j]
                for c in range(head_dim):
                    out_head[c] += p_j * v_j[c]
        if slot >= 0:
            for kv_head in range(kv_heads):
                for c in range(head_dim):
                    keys[row, kv_head, slot, c] = qkv[row, (heads + kv_head) * head_dim + c]
                    values[row, kv_head, slot, c] = qkv[row, (heads + kv_heads + kv_head) * head_dim + c]
            slot_positions[row, slot] = positions[row]
    gemv_into(o_weight, o_bias, y, out, 0)


def _output_weights(o_proj) -> tuple | None:
    weight, bias = o_proj.weight, o_proj.bias
    if not viewable(weight, bias):
        return None
    return DecodeWeights([weight, bias]), weight_view(weight), weight_view(bias)


def attend_token(attention, qkv: torch.Tensor, cache, positions: torch.Tensor) -> torch.Tensor | None:
    """o_proj of attention for one token: qkv (b, 1, (H + 2 H_kv) D) rotated, the layer's KVCache,
    positions (b, 1). Writes the token into the cache; (b, 1, d_out), or None (nothing written)
    where a mask is needed or the tensors cannot be viewed in place."""
    if cache.keys.dtype != torch.float32 or not cache.keys.is_contiguous() or not cache.values.is_contiguous():
        return None
    place = cache.next_slot()
    if place is None:
        return None
    weights = cached_weights(attention.o_proj, _output_weights)
    if weights is None:
        return None
    attended, slot = place
    batch = qkv.shape[0]
    out = np.empty((batch, attention.o_proj.out_features), np.float32)
    _attend_token(
        qkv.view(batch, -1).numpy(),
        cache.keys.numpy(),
        cache.values.numpy(),
        cache.positions.numpy(),
        positions.reshape(batch).numpy(),
        attended,
        slot,
        attention.n_heads,
        np.float32(attention.scale),
        *weights,
        out,
    )
    cache.length += 1
    return torch.from_numpy(out).view(batch, 1, -1)


def program_step(attention, norm, cache):
    """The attention sub-layer's step in a whole-step decode (ops/decode_program.py `_attention_token`):
    the norm, [q | k | v] and o_proj views, RoPE's inverse frequencies (empty without RoPE) and the
    KV cache's tensors viewed in place; None where `decode_token`'s fused path would not run."""
    rope = attention.rope
    if rope is not None and not viewable(rope.inv_freq):
        return None
    projections = (attention.q_proj, attention.k_proj, attention.v_proj)
    inputs = cached_entry(attention, lambda _: projection_weights(norm, projections), norm)
    attend = cache_arguments(attention, cache)
    if inputs is None or attend is None:
        return None
    from .decode_program import ProgramStep

    norm_weight, eps, offset, matrices, biases, width = inputs[1]
    inv_freq = np.zeros(0, np.float32) if rope is None else weight_view(rope.inv_freq)
    rope_heads = attention.n_heads + attention.n_kv_heads
    args = (norm_weight, eps, offset, matrices, biases, width, inv_freq, attention.head_dim, rope_heads, *attend[1])
    views = attend[2] + ([] if rope is None else [(rope, "inv_freq")])
    return ProgramStep("attention", args, [inputs[0], attend[0]], views)


def cache_arguments(attention, cache) -> tuple | None:
    """(o_proj's DecodeWeights, the `_attend_token` arguments from the keys to o_proj's bias, the
    (holder, attribute) of the cache tensors viewed) for a whole-step decode; None where the cache or
    o_proj cannot be viewed in place."""
    if cache.keys.dtype != torch.float32 or not cache.keys.is_contiguous() or not cache.values.is_contiguous():
        return None
    output = cached_entry(attention.o_proj, _output_weights)
    if output is None:
        return None
    tensors = (cache.keys.numpy(), cache.values.numpy(), cache.positions.numpy())
    args = (*tensors, attention.n_heads, np.float32(attention.scale), *output[1])
    return output[0], args, [(cache, "keys"), (cache, "values"), (cache, "positions")]
