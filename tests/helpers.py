"""Small configurations every test file shares."""

from hybridlm import ModelConfig

from . import ema_mixer  # noqa: F401  (registers the family `Y`, defined outside the package)

# One entry per mixer (and FFN) character, with the blend in each of its SSM/attention combinations.
MIXER_CASES = {
    "A": {"pattern": "A"},
    "A-gqa-partial-rope": {"pattern": "A", "n_kv_heads": 2, "attention": {"rope_fraction": 0.5}},
    "A-norope": {"pattern": "A", "attention": {"rope": False}},
    "A-shortconv": {"pattern": "A", "n_kv_heads": 2, "attention": {"short_conv": 3}},
    "L-shortconv": {"pattern": "L", "attention": {"window": 5, "short_conv": 4}},
    "L": {"pattern": "L", "attention": {"window": 5}},
    "S": {"pattern": "SM"},
    "S-lora-2blocks": {"pattern": "SM SD", "shared": {"n_blocks": 2, "lora_rank": 4, "lora_attention": True}},
    "M": {"pattern": "M"},
    "M-multihead-norms": {"pattern": "M", "mamba": {"n_heads": 2, "inner_norms": True}},
    "D": {"pattern": "D"},
    "R": {"pattern": "R"},
    "H": {"pattern": "H"},
    "P-MA": {"pattern": "P", "blend": {"ssm": "M", "attn": "A"}},
    "P-DL": {"pattern": "P", "blend": {"ssm": "D", "attn": "L"}, "attention": {"window": 4}},
    "P-RA": {"pattern": "P", "blend": {"ssm": "R", "attn": "A"}},
    "P-HL": {"pattern": "P", "blend": {"ssm": "H", "attn": "L"}, "attention": {"window": 6}},
    "F": {"pattern": "AF"},
    "E": {"pattern": "AE", "moe": {"n_experts": 4, "top_k": 2}},
    "Y-outside-the-package": {"pattern": "YF"},
}

FFT_CASES = {"H", "P-HL"}  # long convolution by FFT: causal up to rounding, not bit-exact


def tiny_config(**fields) -> ModelConfig:
    base = {
        "d_model": 32,
        "n_heads": 4,
        "vocab_size": 50,
        "mamba": {"d_state": 4},
        "mamba2": {"d_state": 8, "head_dim": 8, "chunk_size": 8},
        "mlp": {"d_ff": 48},
        "hyena": {"n_modes": 3},
    }
    for key, value in fields.items():
        if isinstance(value, dict):
            base[key] = {**base.get(key, {}), **value}
        else:
            base[key] = value
    return ModelConfig.from_dict(base)
