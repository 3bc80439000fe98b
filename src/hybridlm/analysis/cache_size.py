"""Inference cache bytes of a model at context length N, asked of every sub-layer (no weights).

The model is built on the meta device and each mixer answers `cache_bytes(N, batch, dtype_bytes)`
(layers/base.py) in three conventions, each a function of N, batch and the activation dtype:

* ours (`cache_bytes`): exactly what `model.allocate_cache(B, max_len=N)` holds after a prefill of
  N tokens, i.e. `cache.nbytes()`: keys, values and an int64 position per slot (a ring of
  window - 1 slots for windowed attention), conv windows in the activation dtype, SSM and
  recurrence states in fp32, Hyena's modal state in complex64. (Without `max_len` a
  full-attention cache grows geometrically, so it may hold more slots than N.)
* the papers' (`kv_formula_bytes`): KV = 2 * n_attn * min(N, w) * n_kv_heads * head_dim * bytes,
  keys and values only (the convention of the Jamba paper's Table 1).
* the seed's worked example (`simplified_cache_bytes`): full multi-head attention, so d_kv = d,
  2 * N * d values per attention layer (min(N, w) when windowed), and an SSM state of d values
  per SSM layer; every value in `dtype`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import DTYPE_NAMES, ModelConfig
from .params import build_meta

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


def dtype_bytes(dtype: str | torch.dtype) -> int:
    """Bytes per element of an activation dtype given by name ('bfloat16') or as a torch dtype."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
        dtype = DTYPES[dtype]
    return torch.empty((), dtype=dtype).element_size()


@dataclass
class LayerCache:
    """Bytes one sub-layer's cache holds."""

    index: int
    char: str
    kind: str
    kv_bytes: int = 0  # keys and values
    slot_bytes: int = 0  # the position of every KV slot (our cache's bookkeeping)
    state_bytes: int = 0  # conv windows and SSM / recurrence / modal states

    @property
    def total(self) -> int:
        return self.kv_bytes + self.slot_bytes + self.state_bytes


def cache_bytes(config: ModelConfig, seq_len: int, batch: int = 1, dtype: str | torch.dtype = "float32"):
    """Per sub-layer bytes of `allocate_cache(batch, max_len=seq_len)` after a prefill of seq_len tokens."""
    rows = []
    for index, layer, held in _layer_bytes(config, seq_len, batch, dtype):
        kind = layer.mixer.chars[layer.char]
        rows.append(LayerCache(index, layer.char, kind, held.kv, held.slots, held.state))
    return rows


def kv_formula_bytes(config: ModelConfig, seq_len: int, batch: int = 1, dtype: str | torch.dtype = "bfloat16") -> int:
    """2 * n_attn * min(N, w) * n_kv_heads * head_dim * bytes (keys and values only, as in papers)."""
    return sum(held.paper_kv for _, _, held in _layer_bytes(config, seq_len, batch, dtype))


def simplified_cache_bytes(
    config: ModelConfig, seq_len: int, batch: int = 1, dtype: str | torch.dtype = "float32"
) -> int:
    """The seed's formulas: 2 * N * d values per attention layer (MHA), d values per SSM layer."""
    return sum(held.simplified for _, _, held in _layer_bytes(config, seq_len, batch, dtype))


def _layer_bytes(config: ModelConfig, seq_len: int, batch: int, dtype):
    activation_bytes = dtype_bytes(dtype)
    for index, layer in enumerate(build_meta(config).layers):
        yield index, layer, layer.mixer.cache_bytes(seq_len, batch, activation_bytes)
