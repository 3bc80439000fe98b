"""Inference cache bytes of a model at context length N, from its config alone (no weights).

Three conventions, each a function of N, batch and the activation dtype:

* `cache_bytes` (ours): exactly what `model.allocate_cache(B, max_len=N)` holds after a prefill of
  N tokens, i.e. `cache.nbytes()`. Full attention keeps N slots of keys and values plus an int64
  position per slot and row; windowed attention keeps a ring of `window - 1` slots whatever N is;
  conv windows keep k - 1 inputs in the activation dtype; SSM and recurrence states are fp32 and
  Hyena's modal state complex64, whatever the dtype; attention's optional short conv on q, k, v
  keeps k - 1 inputs too. (Without `max_len` a full-attention cache grows
  geometrically, so it may hold more slots than N.)
* `kv_formula_bytes` (the papers'): KV = 2 * n_attn * min(N, w) * n_kv_heads * head_dim * bytes,
  keys and values only (the convention of the Jamba paper's Table 1).
* `simplified_cache_bytes` (the seed's worked example): full multi-head attention, so d_kv = d,
  2 * N * d values per attention layer (min(N, w) when windowed), and an SSM state of d values per
  SSM layer; every value in `dtype`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import DTYPE_NAMES, ModelConfig
from ..pattern import SUBLAYER_NAMES

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}
POSITION_BYTES = 8  # int64 position of each KV slot, per batch row (cache.KVCache.positions)
FP32_BYTES = 4
COMPLEX64_BYTES = 8


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


def attention_shape(config: ModelConfig, char: str) -> tuple[int, int, int]:
    """(query heads, key/value heads, head dim) of an attention-type character (A, L or S)."""
    if char == "S":
        return config.shared_heads, config.shared_kv_heads, config.shared_head_dim
    return config.n_heads, config.kv_heads, config.head_dim


def kv_slots(config: ModelConfig, char: str, seq_len: int) -> int:
    """Slots our KV cache holds after N tokens: N for full attention, window - 1 for the ring of `L`."""
    return config.attention.window - 1 if char == "L" else seq_len


def attention_conv_bytes(config: ModelConfig, char: str, batch: int, activation_bytes: int) -> int:
    """The k - 1 inputs of the optional short conv on q, k, v (`attention.short_conv`; not in `S`)."""
    width = config.attention.short_conv
    if char == "S" or not width:
        return 0
    heads, kv_heads, head_dim = attention_shape(config, char)
    return batch * (heads + 2 * kv_heads) * head_dim * (width - 1) * activation_bytes


def state_bytes(config: ModelConfig, char: str, batch: int, activation_bytes: int) -> int:
    """Fixed-size state of an SSM / recurrent / long-conv mixer (0 for attention and FFNs)."""
    d = config.d_model
    if char == "M":
        d_inner = config.mamba.expand * d
        conv = d_inner * (config.mamba.d_conv - 1) * activation_bytes
        return batch * (conv + d_inner * config.mamba.d_state * FP32_BYTES)
    if char == "D":
        options = config.mamba2
        d_inner = options.expand * d
        conv_dim = d_inner + 2 * options.n_groups * options.d_state
        conv = conv_dim * (options.d_conv - 1) * activation_bytes
        return batch * (conv + d_inner * options.d_state * FP32_BYTES)
    if char == "R":
        width = config.rnn_width
        return batch * (width * (config.rglru.d_conv - 1) * activation_bytes + width * FP32_BYTES)
    if char == "H":
        conv = 3 * d * (config.hyena.short_conv - 1) * activation_bytes
        return batch * (conv + d * config.hyena.n_modes * COMPLEX64_BYTES)
    return 0


def cache_bytes(config: ModelConfig, seq_len: int, batch: int = 1, dtype: str | torch.dtype = "float32"):
    """Per sub-layer bytes of `allocate_cache(batch, max_len=seq_len)` after a prefill of seq_len tokens."""
    activation_bytes = dtype_bytes(dtype)
    rows = []
    for index, char in enumerate(config.chars):
        row = LayerCache(index, char, SUBLAYER_NAMES[char])
        parts = [config.blend.ssm, config.blend.attn] if char == "P" else [char]
        for part in parts:
            if part in "ALS":
                _, kv_heads, head_dim = attention_shape(config, part)
                slots = kv_slots(config, part, seq_len)
                row.kv_bytes += 2 * batch * slots * kv_heads * head_dim * activation_bytes
                row.slot_bytes += batch * slots * POSITION_BYTES
                row.state_bytes += attention_conv_bytes(config, part, batch, activation_bytes)
            else:
                row.state_bytes += state_bytes(config, part, batch, activation_bytes)
        rows.append(row)
    return rows


def attention_layers(config: ModelConfig) -> list[str]:
    """The attention part of every mixer that has one (A, L, S, and the attention half of P)."""
    return [config.blend.attn if char == "P" else char for char in config.chars if char in "ALSP"]


def kv_formula_bytes(config: ModelConfig, seq_len: int, batch: int = 1, dtype: str | torch.dtype = "bfloat16") -> int:
    """2 * n_attn * min(N, w) * n_kv_heads * head_dim * bytes (keys and values only, as in papers)."""
    total = 0
    for char in attention_layers(config):
        _, kv_heads, head_dim = attention_shape(config, char)
        tokens = min(seq_len, config.attention.window) if char == "L" else seq_len
        total += 2 * batch * tokens * kv_heads * head_dim
    return total * dtype_bytes(dtype)


def simplified_cache_bytes(
    config: ModelConfig, seq_len: int, batch: int = 1, dtype: str | torch.dtype = "float32"
) -> int:
    """The seed's formulas: 2 * N * d values per attention layer (MHA), d values per SSM layer."""
    d, values = config.d_model, 0
    for char in config.chars:
        parts = [config.blend.ssm, config.blend.attn] if char == "P" else [char]
        for part in parts:
            if part in "AS":
                values += 2 * seq_len * d
            elif part == "L":
                values += 2 * min(seq_len, config.attention.window) * d
            elif part in "MDRH":
                values += d
    return batch * values * dtype_bytes(dtype)
