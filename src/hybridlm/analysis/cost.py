"""The cost model: parameters, FLOPs and inference cache bytes of a config, without its weights.

`cost_report` gathers the three for one context length N; `cost_curves` evaluates them over a
range of N for plots. Parameters come from the model built on the meta device (params.py), so
they are the modules' own counts (shared blocks and tied embeddings once, MoE total and active);
FLOPs (flops.py) and cache bytes (cache_size.py) are closed forms in the config.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ..config import ModelConfig
from ..pattern import format_pattern
from .cache_size import LayerCache, cache_bytes, dtype_bytes, kv_formula_bytes, simplified_cache_bytes
from .flops import FlopsReport, model_flops
from .params import active_parameters, build_meta, params_by_type, summary


@dataclass
class CacheTotals:
    kv_bytes: int
    slot_bytes: int
    state_bytes: int
    kv_formula_bytes: int  # 2 * n_attn * min(N, w) * n_kv_heads * head_dim * bytes, as in papers
    simplified_bytes: int  # the seed's formulas (MHA, d values of state per SSM layer)

    @property
    def total(self) -> int:
        """What our cache holds (`cache.nbytes()` after allocate_cache(B, max_len=N) and a prefill of N)."""
        return self.kv_bytes + self.slot_bytes + self.state_bytes


@dataclass
class CostReport:
    name: str
    config: ModelConfig
    seq_len: int
    batch: int
    dtype: str
    params: dict  # by sub-layer kind, plus 'total'
    active_params: int
    layers: int
    attention_ratio: float
    flops: FlopsReport
    cache_layers: list[LayerCache]
    cache: CacheTotals

    def cache_by_kind(self) -> dict:
        """{kind: {'count', 'kv_bytes', 'slot_bytes', 'state_bytes'}} over the sub-layers that hold a cache."""
        kinds: dict = {}
        for row in self.cache_layers:
            if row.total == 0:
                continue
            entry = kinds.setdefault(row.kind, {"count": 0, "kv_bytes": 0, "slot_bytes": 0, "state_bytes": 0})
            entry["count"] += 1
            entry["kv_bytes"] += row.kv_bytes
            entry["slot_bytes"] += row.slot_bytes
            entry["state_bytes"] += row.state_bytes
        return kinds

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "pattern": format_pattern(self.config.pattern),
            "layers": self.layers,
            "attention_ratio": self.attention_ratio,
            "d_model": self.config.d_model,
            "seq_len": self.seq_len,
            "batch": self.batch,
            "dtype": self.dtype,
            "params": self.params,
            "active_params": self.active_params,
            "flops": self.flops.to_dict(),
            "cache": {
                "total_bytes": self.cache.total,
                "kv_bytes": self.cache.kv_bytes,
                "slot_bytes": self.cache.slot_bytes,
                "state_bytes": self.cache.state_bytes,
                "kv_formula_bytes": self.cache.kv_formula_bytes,
                "simplified_bytes": self.cache.simplified_bytes,
                "by_kind": self.cache_by_kind(),
            },
        }

    def row(self) -> dict:
        """One flat row (CSV): the headline numbers."""
        return {
            "name": self.name,
            "seq_len": self.seq_len,
            "batch": self.batch,
            "dtype": self.dtype,
            "params": self.params["total"],
            "active_params": self.active_params,
            "training_flops_per_token": self.flops.training_per_token,
            "prefill_flops_per_token": self.flops.prefill_per_token,
            "decode_flops_per_token": self.flops.decode_per_token,
            "cache_bytes": self.cache.total,
            "kv_bytes": self.cache.kv_bytes,
            "state_bytes": self.cache.state_bytes,
            "kv_formula_bytes": self.cache.kv_formula_bytes,
            "simplified_bytes": self.cache.simplified_bytes,
        }


def dtype_name(dtype: str | torch.dtype) -> str:
    dtype_bytes(dtype)  # validates
    return dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")


def cost_report(
    config: ModelConfig, seq_len: int, batch: int = 1, dtype: str | torch.dtype = "float32", name: str = ""
) -> CostReport:
    """Parameters, FLOPs at N and cache bytes at N for `batch` rows of `dtype` activations."""
    if seq_len < 1 or batch < 1:
        raise ValueError("seq_len and batch must be >= 1")
    params, active, info = _parameters(config.to_json())
    layers = cache_bytes(config, seq_len, batch, dtype)
    totals = CacheTotals(
        kv_bytes=sum(row.kv_bytes for row in layers),
        slot_bytes=sum(row.slot_bytes for row in layers),
        state_bytes=sum(row.state_bytes for row in layers),
        kv_formula_bytes=kv_formula_bytes(config, seq_len, batch, dtype),
        simplified_bytes=simplified_cache_bytes(config, seq_len, batch, dtype),
    )
    return CostReport(
        name=name or format_pattern(config.pattern),
        config=config,
        seq_len=seq_len,
        batch=batch,
        dtype=dtype_name(dtype),
        params=dict(params),
        active_params=active,
        layers=info["layers"],
        attention_ratio=info["attention_ratio"],
        flops=model_flops(config, seq_len),
        cache_layers=layers,
        cache=totals,
    )


@functools.lru_cache(maxsize=32)
def _parameters(config_json: str) -> tuple[dict, int, dict]:
    """(params by type, active params, summary) of a config, built once on the meta device."""
    model = build_meta(ModelConfig.from_json(config_json))
    return params_by_type(model), active_parameters(model), summary(model)


def cost_curves(
    config: ModelConfig,
    seq_lens: list[int],
    batch: int = 1,
    dtype: str | torch.dtype = "float32",
    simplified: bool = False,
) -> dict:
    """Cache bytes and FLOPs per token over several N (the closed forms only: no model is built)."""
    curves: dict = {"seq_len": [], "cache_bytes": [], "prefill_flops_per_token": [], "decode_flops_per_token": []}
    for seq_len in seq_lens:
        flops = model_flops(config, seq_len)
        if simplified:
            memory = simplified_cache_bytes(config, seq_len, batch, dtype)
        else:
            memory = sum(row.total for row in cache_bytes(config, seq_len, batch, dtype))
        curves["seq_len"].append(seq_len)
        curves["cache_bytes"].append(memory)
        curves["prefill_flops_per_token"].append(flops.prefill_per_token)
        curves["decode_flops_per_token"].append(flops.decode_per_token)
    return curves
