"""A whole decoding step in one numba call: the embedding, every sub-layer's fused kernel with its
residual add, the final norm and the LM head.

Glossary: b batch (rows decoded together), d model width, V vocabulary, L sub-layers.

Called one sub-layer at a time (ops/decode_cpu.py and the other `*_step_cpu.py` files), a token
still pays the module calls, the checks and the numpy views around each kernel: 0.9-1.4 ms of a
3.2-3.8 ms step at the small presets here (mamba, transformer, jamba), most of it because the
interpreter's own code and data come back cold after every kernel has streamed a layer's weights.
A `DecodeProgram` asks each
sub-layer once for its `ProgramStep` (the kernel it runs and that kernel's arguments: weight views
and views of its cache state), keeps them in one typed list per kernel, and runs

    x = E[token] * embedding_scale
    x = x + Sublayer_l(x)         l = 1 .. L, each by its kernel (KINDS)
    logits = W_head RMSNorm(x)

in one call (a sub-layer whose output feeds the next mixer, Zamba's shared block, hands x + t to
it and leaves x alone, as model.py does). Per token the Python side only checks that nothing it
views moved (a parameter or a state tensor replaced, a derived copy's source changed, a module
registered, a hook added), asks each KV cache for its slot, and counts the token. It applies where
every sub-layer has a step: padding stored in a KV cache, RoPE on a shared block, or a mixer
without `decode_program_step` (Hyena, the alpha-blend) leaves the token to the per-sub-layer path.
Both give the same logits: bit for bit where a step calls the sub-layer path's own kernel, within
float32 rounding for the RG-LRU block (its linears on the GEMV here, torch's there).

numba's disk cache follows this file only: after editing a kernel it calls, delete
ops/__pycache__/decode_program*.nb* too.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch
from numba import njit, typed, typeof, types
from numba.extending import overload

from . import (
    attention_decode_cpu,
    decode_cpu,
    mamba2_step_cpu,
    mamba_step_cpu,
    moe_decode_cpu,
    rglru_step_cpu,
    shared_step_cpu,
)
from .decode_cpu import DecodeWeights, weight_view
from .dispatch import fused_decode_allowed

log = logging.getLogger(__name__)

KINDS = ("mamba", "mamba2", "mlp", "moe", "attention", "shared", "rglru")  # the fused kernels a step may name
_MAMBA, _MAMBA2, _MLP, _MOE, _ATTENTION, _SHARED, _RGLRU = range(len(KINDS))
_WITH_CACHE = ("attention", "shared")  # kinds that write a KV cache slot per token


@dataclass
class ProgramStep:
    """One sub-layer in a program: `kind` (one of KINDS) names its kernel, `args` the kernel's arguments
    between its input and its output (for attention, before the token's positions and slot), `weights`
    the DecodeWeights its views come from and `views` the (holder, attribute) of each other tensor it
    views (cache states, which `select` and growing replace; buffers)."""

    kind: str
    args: tuple
    weights: list
    views: list = field(default_factory=list)


# ---- the kernels, by kind (a kind absent from the model is None and compiles to nothing) -------------------
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


def _attention(x, embedded, steps, j, positions, place, out):
    raise NotImplementedError  # replaced inside jitted code by the overload below


@overload(_attention, inline="always")
def _attention_typed(x, embedded, steps, j, positions, place, out):
    if isinstance(steps, types.NoneType):
        return lambda x, embedded, steps, j, positions, place, out: None

    def call(x, embedded, steps, j, positions, place, out):
        _attention_token(x, *steps[j], positions, place[0], place[1], out)

    return call


def _shared(x, embedded, steps, j, positions, place, out):
    raise NotImplementedError  # replaced inside jitted code by the overload below


@overload(_shared, inline="always")
def _shared_typed(x, embedded, steps, j, positions, place, out):
    if isinstance(steps, types.NoneType):
        return lambda x, embedded, steps, j, positions, place, out: None

    def call(x, embedded, steps, j, positions, place, out):
        _shared_token(x, embedded, *steps[j], positions, place[0], place[1], out)

    return call


@njit(fastmath=True, error_model="numpy", cache=True)
def _run(
    ids, embedding, embedding_scale, positions, places, order, mamba, mamba2, mlp, moe, attention, shared, rglru,
    head, logits,
):  # fmt: skip
    """order (L, 4): each sub-layer's kind, its index in that kind's list, its row of places (-1 for
    none) and whether its output feeds the next mixer (model.py: x + t is the next one's input, x is
    unchanged); places (KV caches, 2): each cache's (slots attended, slot written) for this token."""
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
    feeding = False
    for layer in range(order.shape[0]):
        kind, j, place, feeds = order[layer, 0], order[layer, 1], order[layer, 2], order[layer, 3]
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
        else:
            _rglru(source, rglru, j, positions, out)
        feeding = feeds != 0
        if feeding:
            fed[:] = out
        else:
            for row in range(batch):
                for i in range(width):
                    x[row, i] += out[row, i]
    decode_cpu._norm_project(x, *head, logits)


@njit(cache=True)
def _listed(item):
    """A typed List holding `item`. Made here, and grown by `_appended`, so that the list's methods are
    compiled into these cached functions: called from Python, typed.List compiles each of its methods
    for every item type in every process (~2.5 s before a model's first token)."""
    items = typed.List()
    items.append(item)
    return items


@njit(cache=True)
def _appended(items, item):
    items.append(item)
    return items


# ---- the program ------------------------------------------------------------------------------------
class DecodeProgram:
    """The steps of every sub-layer of `model` decoding with `cache`, built once and run per token."""

    def __init__(self, model, cache, steps: list, head: tuple, head_weights: DecodeWeights):
        self.batch = cache.batch_size
        self.vocab = model.config.vocab_size
        embedding = model.embed_tokens.weight
        self.embedding = weight_view(embedding)
        scale = model.config.embedding_scale
        self.embedding_scale = np.float32(1.0 if scale is None else model._embedding_scale(torch.float32).item())
        self.head = head
        lists: dict = {}  # kind -> typed List of its steps' arguments
        counts = dict.fromkeys(KINDS, 0)
        order = np.empty((len(steps), 4), np.int64)
        self.kv_caches = []
        for index, (layer, step) in enumerate(zip(model.layers, steps)):
            lists[step.kind] = _appended(lists[step.kind], step.args) if step.kind in lists else _listed(step.args)
            place = len(self.kv_caches) if step.kind in _WITH_CACHE else -1
            order[index] = KINDS.index(step.kind), counts[step.kind], place, layer.feeds_next_mixer
            counts[step.kind] += 1
            if place >= 0:
                self.kv_caches.append(cache.states[index])
        self.order = order
        self.lists = tuple(lists.get(kind) for kind in KINDS)
        self.places = np.zeros((max(len(self.kv_caches), 1), 2), np.int64)
        moes = [(model.layers[i].mixer, step) for i, step in enumerate(steps) if step.kind == "moe"]
        self.routed = [(moe, step.args[-2], step.args[-1]) for moe, step in moes]  # probabilities, chosen
        held = [weights for step in steps for weights in step.weights] + [head_weights]
        self.weights = DecodeWeights(
            [embedding, *(t for weights in held for t in weights.tensors)],
            derived_from=tuple(t for weights in held for t in weights.derived_from),
        )
        self.states = list(cache.states)  # held, so that no other state object can take one of their ids
        self.viewed = [view for step in steps for view in step.views]
        self.pointers = self._pointers(cache)

    def _pointers(self, cache) -> list:
        """Where each viewed tensor lives now, and which state objects the cache holds."""
        return [getattr(holder, name).data_ptr() for holder, name in self.viewed] + list(map(id, cache.states))

    def fresh(self, cache) -> bool:
        """Whether every view still describes the model's parameters and the cache's tensors."""
        return self.weights.fresh() and self._pointers(cache) == self.pointers

    def run(self, input_ids: torch.Tensor, cache) -> torch.Tensor | None:
        """Logits (b, 1, V) of one token per row, the cache updated; None where a KV cache needs a
        mask for it or the rows are not the cache's. Raises `_Stale` (nothing written) when a view no
        longer holds."""
        if input_ids.shape[0] != self.batch:
            return None
        for j, kv_cache in enumerate(self.kv_caches):
            place = kv_cache.next_slot()  # may grow the cache: then the views below no longer hold
            if place is None:
                return None
            self.places[j] = place
        if not self.fresh(cache):
            raise _Stale
        logits = np.empty((self.batch, self.vocab), np.float32)
        _run(
            input_ids.reshape(-1).numpy(), self.embedding, self.embedding_scale, cache.seen.numpy(), self.places,
            self.order, *self.lists, self.head, logits,
        )  # fmt: skip
        for kv_cache in self.kv_caches:
            kv_cache.length += 1
        for moe, probs, chosen in self.routed:  # what the per-sub-layer path records (layers/moe.py)
            moe._routing = (torch.from_numpy(probs.copy()), torch.from_numpy(chosen.copy()), None)
        cache.seen = cache.seen + 1
        return torch.from_numpy(logits).view(self.batch, 1, self.vocab)


class _Stale(Exception):
    """A program's views no longer describe the model or the cache: build it again."""


def build_program(model, cache) -> DecodeProgram | None:
    """The program of `model` decoding with `cache`, or None where some sub-layer has no step."""
    embedding = model.embed_tokens.weight
    if not decode_cpu.viewable(embedding) or cache.seen.device.type != "cpu":
        return None
    steps = []
    for layer, state in zip(model.layers, cache.states):
        step = layer.program_step(state, cache.batch_size, model.shared_modules)
        if step is None:
            return None
        steps.append(step)
    item_types = {}
    for step in steps:  # one typed list per kind: its steps' arguments must have one type
        if item_types.setdefault(step.kind, typeof(step.args)) != typeof(step.args):
            log.debug("no decode program: %s steps whose arguments differ in type", step.kind)
            return None
    norm, lm_head = model.final_norm, model.lm_head
    entry = decode_cpu.cached_entry(model, lambda _: decode_cpu.projection_weights(norm, (lm_head,)), norm)
    if entry is None:
        return None
    head_weights, (norm_weight, eps, offset, matrices, biases, _) = entry
    return DecodeProgram(model, cache, steps, (norm_weight, eps, offset, matrices, biases), head_weights)


_TOKEN_DTYPES = (torch.int64, torch.int32)
# model -> cache -> (generation, program or None): dropped with either; a program holds views of both
_PROGRAMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def decode_logits(model, cache, input_ids: torch.Tensor) -> torch.Tensor | None:
    """Logits (b, 1, V) for one unpadded token per row (input_ids (b, 1)) by the model's program, the cache
    updated in place; None (nothing changed) where the program does not apply. Where it cannot be
    built, it is asked again only once a module is registered somewhere."""
    if input_ids.shape[1] != 1 or input_ids.dtype not in _TOKEN_DTYPES or not input_ids.is_cpu:
        return None
    if not fused_decode_allowed(model):
        return None
    programs = _PROGRAMS.setdefault(model, weakref.WeakKeyDictionary())
    for _attempt in range(2):  # a stale program is built again once
        entry = programs.get(cache)
        generation = decode_cpu.generation()
        if entry is None or (entry[1] is None and entry[0] != generation):
            entry = programs[cache] = (generation, build_program(model, cache))
        if entry[1] is None:
            return None
        try:
            return entry[1].run(input_ids, cache)
        except _Stale:
            programs.pop(cache, None)
    return None
