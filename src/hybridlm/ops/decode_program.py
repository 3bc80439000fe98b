"""A whole decoding step in one numba call: the embedding, every sub-layer's fused kernel with its
residual add, the final norm and the LM head.

Glossary: b batch (rows decoded together), d model width, V vocabulary, L sub-layers.

Called one sub-layer at a time (ops/decode_cpu.py and the other `*_step_cpu.py` files), a token
still pays the module calls, the checks and the numpy views around each kernel: 0.9-1.4 ms of a
3.2-3.8 ms step at the small presets here (mamba, transformer, jamba), most of it because the
interpreter's own code and data come back cold after every kernel has streamed a layer's weights.
A `DecodeProgram` asks each sub-layer once for its `ProgramStep` (the kernel it runs and that
kernel's arguments: weight views and views of its cache state), keeps them in one typed list per
kernel, and runs

    x = E[token] * embedding_scale
    x = x + Sublayer_l(x)         l = 1 .. L, each by its kernel (KINDS)
    logits = W_head RMSNorm(x)

in one call, as model.py composes them: a sub-layer whose output feeds the next mixer (Zamba's
shared block) hands x + t to it and leaves x alone; the alpha-blend's two parts read the same
input and add alpha o SSM + (1 - alpha) o attention. Per token the Python side only checks that
nothing it views moved (a parameter or a state tensor replaced, a derived copy's source changed, a
module registered, a hook added), asks each KV cache for its slot, and counts the token. Padding
stored in a KV cache, RoPE on a shared block, or a mixer without `decode_program_step` leaves the
token to the per-sub-layer path. Both give the same logits: bit for bit where a step calls the
sub-layer path's own kernel, within float32 rounding for the RG-LRU and Hyena blocks (their
linears on the GEMV here, torch's there) and the alpha-blend (its norm computed in each part).

The numba side is ops/decode_program_kernels.py.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch
from numba import typeof

from . import decode_cpu, decode_worker
from .decode_cpu import DecodeWeights, weight_view
from .decode_program_kernels import KINDS, appended, listed
from .decode_program_kernels import run as _run
from .dispatch import fused_decode_allowed
from .gemv_split import SPLIT_MIN

log = logging.getLogger(__name__)


@dataclass
class ProgramStep:
    """One sub-layer in a program: `kind` (one of KINDS) names its kernel, `args` the kernel's arguments
    between its input and its output (for attention, before the token's positions and slot), `weights`
    the DecodeWeights its views come from and `views` the (holder, attribute) of each other tensor it
    views (cache states, which `select` and growing replace; buffers); `kv_cache` the KVCache whose
    slot it writes. A sub-layer of parallel parts (the alpha-blend) has kind "parts" and `parts`:
    (step, scale) pairs that read the same input, their outputs scaled per channel and summed."""

    kind: str
    args: tuple
    weights: list
    views: list = field(default_factory=list)
    kv_cache: object = None
    parts: list = field(default_factory=list)


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
        self.softcap = np.float32(model.config.logit_softcap or 0.0)
        self._lay_out(model, steps)
        self.places = np.zeros((max(len(self.kv_caches), 1), 2), np.int64)
        moes = [(model.layers[i].mixer, step) for i, step in enumerate(steps) if step.kind == "moe"]
        # what the per-sub-layer path records (layers/moe.py `_routing`), as views of the kernel's own
        # probabilities and chosen experts: the next token overwrites them, and `stats` reads the last one
        self.routed = [
            (moe, (torch.from_numpy(step.args[-2]), torch.from_numpy(step.args[-1]), None)) for moe, step in moes
        ]
        steps = [call for step in steps for call, _ in _calls(step)] + [step for step in steps if step.parts]
        held = [weights for step in steps for weights in step.weights] + [head_weights]
        self.weights = DecodeWeights(
            [embedding, *(t for weights in held for t in weights.tensors)],
            derived_from=tuple(t for weights in held for t in weights.derived_from),
        )
        self.splits = any(t.dim() == 2 and t.numel() >= SPLIT_MIN for t in self.weights.tensors)  # for a worker
        self.states = list(cache.states)  # held, so that no other state object can take one of their ids
        self.viewed = [view for step in steps for view in step.views]
        self.pointers = self._pointers(cache)

    def _lay_out(self, model, steps: list) -> None:
        """The kernel calls in order (`_run`'s `order`), the typed lists of their arguments, the scales
        of parts and the KV caches written, from each sub-layer's step."""
        lists: dict = {}  # kind -> typed List of its calls' arguments
        counts = dict.fromkeys(KINDS, 0)
        order, scales, self.kv_caches = [], [], []
        for layer, step in zip(model.layers, steps):
            calls = _calls(step)
            for number, (call, scale) in enumerate(calls):
                lists[call.kind] = appended(lists[call.kind], call.args) if call.kind in lists else listed(call.args)
                place = -1 if call.kv_cache is None else len(self.kv_caches)
                scale_row = -1 if scale is None else len(scales)
                self.kv_caches += [] if call.kv_cache is None else [call.kv_cache]
                scales += [] if scale is None else [scale]
                holds = number < len(calls) - 1
                feeds = layer.feeds_next_mixer
                order.append((KINDS.index(call.kind), counts[call.kind], place, feeds, scale_row, holds))
                counts[call.kind] += 1
        self.order = np.array(order, np.int64).reshape(-1, 6)
        self.scales = np.stack(scales) if scales else np.zeros((0, model.config.d_model), np.float32)
        self.lists = tuple(lists.get(kind) for kind in KINDS)

    def _pointers(self, cache) -> list:
        """Where each viewed tensor lives now, and which state objects the cache holds."""
        return [getattr(holder, name).data_ptr() for holder, name in self.viewed] + list(map(id, cache.states))

    def fresh(self, cache) -> bool:
        """Whether every view still describes the model's parameters and the cache's tensors."""
        return self.weights.fresh() and self._pointers(cache) == self.pointers

    def run(self, input_ids: torch.Tensor, cache) -> torch.Tensor | None:
        """Logits (b, 1, V) of one token per row (soft-capped), the cache updated; None where a KV cache needs a
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
        if self.splits:
            decode_worker.WORKER.offer()
        logits = np.empty((self.batch, self.vocab), np.float32)
        ids = np.ascontiguousarray(input_ids.numpy().reshape(-1), np.int64)  # one compiled `_run` for any ids
        positions = cache.seen.numpy()
        _run(
            ids, self.embedding, self.embedding_scale, positions, self.places,
            self.scales, self.order, *self.lists, self.head, self.softcap, logits,
        )  # fmt: skip
        for kv_cache in self.kv_caches:
            kv_cache.length += 1
        for moe, routing in self.routed:
            moe.__dict__["_routing"] = routing  # a plain attribute: without nn.Module.__setattr__'s checks
        cache.seen = torch.from_numpy(positions + 1)  # numpy's add and reshape: cheaper than torch's here
        return torch.from_numpy(logits.reshape(self.batch, 1, self.vocab))


def _calls(step: ProgramStep) -> list:
    """The kernel calls of a sub-layer's step: (step, None), or its parts' (step, scale)."""
    return step.parts or [(step, None)]


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
    for call in [call for step in steps for call, _ in _calls(step)]:  # one typed list per kind: one type
        if item_types.setdefault(call.kind, typeof(call.args)) != typeof(call.args):
            log.debug("no decode program: %s steps whose arguments differ in type", call.kind)
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
    """Logits (b, 1, V), soft-capped where the model caps them, for one unpadded token per row
    (input_ids (b, 1)) by the model's program, the cache updated in place; None (nothing changed)
    where the program does not apply. Where it cannot be built, it is asked again only once a module
    is registered somewhere."""
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
