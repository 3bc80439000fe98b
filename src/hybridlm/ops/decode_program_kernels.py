"""The whole-step decode's one numba call (`run`, ops/decode_program.py): the embedding, each kernel
call in the program's order with the residual adds, the final norm and the LM head.

Glossary: b batch, d model width, V vocabulary.

Each kind (KINDS) has its list of argument tuples, a numba typed list, or None where the model has
no such sub-layer: the overloads below then compile the kind's call to nothing, so that one
compiled `run` serves every model with the same kinds. numba's disk cache follows this file only:
after editing a kernel it calls, delete ops/__pycache__/decode_program_kernels*.nb* too.
"""

from __future__ import annotations

import numpy as np
from numba import njit, typed, types
from numba.extending import overload

from . import (
    attention_decode_cpu,
    decode_cpu,
    hyena_step_cpu,
    mamba2_step_cpu,
    mamba_step_cpu,
    moe_decode_cpu,
    rglru_step_cpu,
    shared_step_cpu,
)
from .numba_support import copy_into

KINDS = ("mamba", "mamba2", "mlp", "moe", "attention", "shared", "rglru", "hyena")  # the kernels a step may name
_MAMBA, _MAMBA2, _MLP, _MOE, _ATTENTION, _SHARED, _RGLRU, _HYENA = range(len(KINDS))


def _sublayer_call(kernel):
    """A jitted `call(x, steps, j, out)`: kernel(x, *steps[j], out), or nothing when steps is None."""

    def call(x, steps, j, out):
        raise NotImplementedError  # replaced inside jitted code by the overload below

    @overload(call, inline="always")
    def _typed(x, steps, j, out):
        if isinstance(steps, types.NoneType):
            return lambda x, steps, j, out: None
        return lambda x, steps, j, out: kernel(x, *steps[j], out)

    return call


_mamba = _sublayer_call(mamba_step_cpu._sublayer_step)
_mamba2 = _sublayer_call(mamba2_step_cpu._sublayer_step)
_mlp = _sublayer_call(decode_cpu._mlp_step)
_moe = _sublayer_call(moe_decode_cpu._moe_token)
_hyena = _sublayer_call(hyena_step_cpu._sublayer_step)


def _rglru(x, steps, j, positions, out):
    raise NotImplementedError  # replaced inside jitted code by the overload below


@overload(_rglru, inline="always")
def _rglru_typed(x, steps, j, positions, out):
    if isinstance(steps, types.NoneType):
        return lambda x, steps, j, positions, out: None
    return lambda x, steps, j, positions, out: rglru_step_cpu._sublayer_step(x, *steps[j], positions, out)


@njit(fastmath=True, error_model="numpy", cache=True)
def _attention_token(
    x, norm_weight, eps, offset, matrices, biases, width, inv_freq, head_dim, rope_heads,
    keys, values, slot_positions, heads, scale, o_weight, o_bias, positions, attended, slot, out,
):  # fmt: skip
    """layers/attention.py `decode_token`'s fused path: [q | k | v] of RMSNorm(x), RoPE on q and k (when
    inv_freq is not empty), then the cache write, attention and o_proj (ops/attention_decode_cpu.py)."""
    qkv = np.empty((x.shape[0], width), np.float32)
    decode_cpu._norm_project(x, norm_weight, eps, offset, matrices, biases, qkv)
    if inv_freq.size:
        decode_cpu._rope_in_place(qkv, positions, inv_freq, head_dim, rope_heads)
    attention_decode_cpu._attend_token(
        qkv, keys, values, slot_positions, positions, attended, slot, heads, scale, o_weight, o_bias, out
    )


@njit(fastmath=True, error_model="numpy", cache=True)
def _shared_token(x, embedded, projection, width, attend, after, positions, attended, slot, out):
    """layers/shared.py `decode_token`'s fused path: [q | k | v] of RMSNorm([x | e]) with the site's LoRA
    deltas, the block's attention (cache write, softmax, o_proj), then its MLP and the site's linear
    (ops/shared_step_cpu.py)."""
    qkv = np.empty((x.shape[0], width), np.float32)
    shared_step_cpu._project(x, embedded, *projection, qkv)
    attention_out = np.empty_like(x)
    attention_decode_cpu._attend_token(qkv, *attend[:3], positions, attended, slot, *attend[3:], attention_out)
    shared_step_cpu._after_attention(attention_out, *after, out)


def _cache_call(kernel, reads_embedding: bool):
    """A jitted `call(x, embedded, steps, j, positions, place, out)` for a kind that writes a KV cache
    slot: kernel(x, [embedded,] *steps[j], positions, attended, slot, out), or nothing for None."""

    def call(x, embedded, steps, j, positions, place, out):
        raise NotImplementedError  # replaced inside jitted code by the overload below

    @overload(call, inline="always")
    def _typed(x, embedded, steps, j, positions, place, out):
        if isinstance(steps, types.NoneType):
            return lambda x, embedded, steps, j, positions, place, out: None
        if reads_embedding:
            return lambda x, embedded, steps, j, positions, place, out: kernel(
                x, embedded, *steps[j], positions, place[0], place[1], out
            )
        return lambda x, embedded, steps, j, positions, place, out: kernel(
            x, *steps[j], positions, place[0], place[1], out
        )

    return call


_attention = _cache_call(_attention_token, reads_embedding=False)
_shared = _cache_call(_shared_token, reads_embedding=True)


@njit(fastmath=True, error_model="numpy", cache=True, nogil=True)
def run(
    ids, embedding, embedding_scale, positions, places, scales, order, mamba, mamba2, mlp, moe, attention, shared,
    rglru, hyena, head, softcap, logits,
):  # fmt: skip
    """order (kernel calls, 6): each call's kind, its index in that kind's list, its row of places (-1 for
    none), whether its output feeds the next mixer (model.py: x + t is the next one's input, x is
    unchanged), its row of scales (-1 for none: out *= scales[row] per channel) and whether it is a
    part whose output is held for the next call, which reads the same input (the alpha-blend);
    places (KV caches, 2): each cache's (slots attended, slot written) for this token; softcap > 0:
    logits = softcap * tanh(logits / softcap) (Gemma 2's logit soft-cap, model.py). It releases the
    GIL, so that the GEMV worker (ops/decode_worker.py) woken for this token can start serving in it."""
    batch, width = ids.shape[0], embedding.shape[1]
    for row in range(batch):  # before anything is written
        if ids[row] < 0 or ids[row] >= embedding.shape[0]:
            raise IndexError("token id out of the vocabulary")
    x = np.empty((batch, width), np.float32)
    for row in range(batch):
        for i in range(width):
            x[row, i] = embedding[ids[row], i] * embedding_scale
    embedded = x.copy()  # e, what Zamba's shared block reads beside x
    out = np.empty_like(x)
    fed = np.zeros_like(x)  # x + t, the input after a sub-layer that feeds the next mixer
    held = np.zeros_like(x)  # the sum of a sub-layer's parts so far
    feeding = holding = False
    source = x
    for call in range(order.shape[0]):
        kind, j, place, feeds, scale, holds = order[call]
        if not holding:  # a part after the first reads its sub-layer's input again
            source = x
            if feeding:
                for row in range(batch):
                    for i in range(width):
                        fed[row, i] += x[row, i]
                source = fed
        if kind == _MAMBA:
            _mamba(source, mamba, j, out)
        elif kind == _MAMBA2:
            _mamba2(source, mamba2, j, out)
        elif kind == _MLP:
            _mlp(source, mlp, j, out)
        elif kind == _MOE:
            _moe(source, moe, j, out)
        elif kind == _ATTENTION:
            _attention(source, embedded, attention, j, positions, places[place], out)
        elif kind == _SHARED:
            _shared(source, embedded, shared, j, positions, places[place], out)
        elif kind == _RGLRU:
            _rglru(source, rglru, j, positions, out)
        else:
            _hyena(source, hyena, j, out)
        if scale >= 0:
            for row in range(batch):
                for i in range(width):
                    out[row, i] *= scales[scale, i]
        if holding:
            for row in range(batch):
                for i in range(width):
                    out[row, i] += held[row, i]
        holding = holds != 0
        if holding:
            copy_into(held, out)
            continue
        feeding = feeds != 0
        if feeding:
            copy_into(fed, out)
        else:
            for row in range(batch):
                for i in range(width):
                    x[row, i] += out[row, i]
    decode_cpu._norm_project(x, *head, logits)
    if softcap > 0:
        for row in range(batch):
            for v in range(logits.shape[1]):
                logits[row, v] = softcap * np.tanh(logits[row, v] / softcap)


@njit(cache=True)
def listed(item):
    """A typed List holding `item`. Made here, and grown by `appended`, so that the list's methods are
    compiled into these cached functions: called from Python, typed.List compiles each of its methods
    for every item type in every process (~2.5 s before a model's first token)."""
    items = typed.List()
    items.append(item)
    return items


@njit(cache=True)
def appended(items, item):
    items.append(item)
    return items
