"""Published cache-size tables, recomputed by the cost model.

* The seed's worked example (fp32, d = 2048, N = 8192, 24 layers) uses simplified formulas: full
  multi-head attention (d_kv = d) and an SSM state of d values per layer. The same three models
  with our real state sizes (16 heads of 128, Mamba-1 with d_state 16, expand 2, conv 4) sit beside.
* The Jamba paper's Table 1 (Lieber et al. 2024): KV cache at 256K tokens in 16-bit, keys and
  values only: Jamba 4 GB, Mistral-7B 32 GB, Llama-2-7B 128 GB. Mistral-7B uses a 4096-token
  sliding window, which the table ignores; both readings are given.
"""

from __future__ import annotations

from ..config import ModelConfig
from ..presets import preset_config
from .cache_size import cache_bytes, kv_formula_bytes, simplified_cache_bytes

SEED_WIDTH, SEED_SEQ_LEN, SEED_DTYPE = 2048, 8192, "float32"
SEED_MODELS = {
    "24 attention layers": "(A)*24",
    "3 attention + 21 SSM layers": "(M M M M A M M M)*3",
    "24 SSM layers": "(M)*24",
}

JAMBA_TABLE_SEQ_LEN, JAMBA_TABLE_DTYPE = 256 * 1024, "bfloat16"
# mistralai/Mistral-7B-v0.1 config.json: 32 layers, hidden 4096, 32 heads, 8 KV heads, MLP 14336,
# vocab 32000, sliding window 4096 (7,241,732,096 parameters).
MISTRAL_7B = {
    "pattern": "(AF)*32",
    "d_model": 4096,
    "n_heads": 32,
    "n_kv_heads": 8,
    "vocab_size": 32000,
    "tie_embeddings": False,
    "mlp": {"d_ff": 14336},
    "attention": {"window": 4096},
}


def seed_config(pattern: str) -> ModelConfig:
    """One of the seed's 24-layer models at d = 2048 with our defaults for everything else."""
    return ModelConfig(pattern=pattern, d_model=SEED_WIDTH, n_heads=16)


def seed_example(batch: int = 1) -> list[dict]:
    """The seed's three models: simplified bytes, and the bytes our caches really hold."""
    rows = []
    for name, pattern in SEED_MODELS.items():
        config = seed_config(pattern)
        rows.append(
            {
                "model": name,
                "pattern": pattern,
                "simplified_bytes": simplified_cache_bytes(config, SEED_SEQ_LEN, batch, SEED_DTYPE),
                "kv_formula_bytes": kv_formula_bytes(config, SEED_SEQ_LEN, batch, SEED_DTYPE),
                "cache_bytes": sum(row.total for row in cache_bytes(config, SEED_SEQ_LEN, batch, SEED_DTYPE)),
            }
        )
    return rows


def jamba_table_models() -> dict[str, ModelConfig]:
    mistral = ModelConfig.from_dict(MISTRAL_7B)
    return {
        "Jamba-v0.1 (jamba paper preset)": preset_config("jamba", "paper"),
        "Mistral-7B, counted as full attention": mistral,
        "Mistral-7B, 4096-token sliding window": mistral.with_overrides({"pattern": "(LF)*32"}),
        "Llama-2-7B (transformer paper preset)": preset_config("transformer", "paper"),
    }


def jamba_kv_table(seq_len: int = JAMBA_TABLE_SEQ_LEN, dtype: str = JAMBA_TABLE_DTYPE) -> list[dict]:
    """KV bytes at 256K tokens in 16-bit by the papers' formula, and what our cache would hold."""
    rows = []
    for name, config in jamba_table_models().items():
        rows.append(
            {
                "model": name,
                "pattern": config.pattern,
                "kv_formula_bytes": kv_formula_bytes(config, seq_len, 1, dtype),
                "cache_bytes": sum(row.total for row in cache_bytes(config, seq_len, 1, dtype)),
            }
        )
    return rows
