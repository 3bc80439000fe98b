"""`bamba` (BambaForCausalLM): Mamba-2 and attention layers, each followed by a SwiGLU MLP.

Layer j is attention when j is in `attn_layer_indices`, else Mamba-2: our `AF` or `DF`. Attention
rotates the first half of head_dim (transformers hard-codes partial_rotary_factor 0.5 for Bamba
unless `rope_parameters` sets one; rounded as `common.rotary_from_hf` says) and
`attention_bias` puts biases on q, k, v and o alike. The gated RMSNorm uses `rms_norm_eps`, and
`hidden_act` drives both the MLP and the Mamba-2 conv, so it must be SiLU. transformers' Bamba
gives every new token RoPE position 0 in a hand-written decode loop without `position_ids`
(`generate` passes them); this does not affect a full forward.
"""

from __future__ import annotations

from ..config import ConfigError, ModelConfig
from .common import (
    compact_pattern,
    decoder_fields,
    hf_layers,
    require,
    rope_fields,
    rope_parameters,
    rotary_from_hf,
    rotary_to_hf,
    with_defaults,
)
from .rules import MAMBA2_NAMES, decoder_rules

MODEL_TYPE = "bamba"
ARCHITECTURE = "BambaForCausalLM"
DEFAULTS = {
    "model_type": MODEL_TYPE,
    "vocab_size": 128000,
    "tie_word_embeddings": False,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "attn_layer_indices": [],
    "mamba_n_heads": 128,
    "mamba_d_head": "auto",
    "mamba_n_groups": 1,
    "mamba_d_state": 256,
    "mamba_d_conv": 4,
    "mamba_expand": 2,
    "mamba_chunk_size": 256,
    "mamba_conv_bias": True,
    "mamba_proj_bias": False,
    "time_step_limit": (0.0, float("inf")),
    "attention_bias": False,
    "mlp_bias": False,
}


def config_from_hf(hf: dict) -> ModelConfig:
    hf = with_defaults(hf, DEFAULTS)
    require(hf, "hidden_act", "silu", "Bamba's Mamba-2 conv uses hidden_act and hybridlm's uses SiLU")
    d_inner = hf["mamba_expand"] * hf["hidden_size"]
    head_dim = d_inner // hf["mamba_n_heads"] if hf["mamba_d_head"] == "auto" else hf["mamba_d_head"]
    if head_dim * hf["mamba_n_heads"] != d_inner:
        raise ConfigError("bamba: mamba_n_heads * mamba_d_head must equal mamba_expand * hidden_size")
    attention_layers = set(hf["attn_layer_indices"])
    layers = ["AF" if index in attention_layers else "DF" for index in range(hf["num_hidden_layers"])]
    attention_head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    theta, fraction = rope_fields(hf, default_fraction=0.5, top_level_fraction=False)
    if attention_layers:
        theta, fraction = rotary_from_hf(MODEL_TYPE, attention_head_dim, theta, fraction)
    return ModelConfig(
        pattern=compact_pattern(layers),
        d_model=hf["hidden_size"],
        vocab_size=hf["vocab_size"],
        n_heads=hf["num_attention_heads"],
        n_kv_heads=hf["num_key_value_heads"],
        norm_eps=hf["rms_norm_eps"],
        tie_embeddings=hf["tie_word_embeddings"],
        attention={
            "head_dim": attention_head_dim,
            "rope": True,
            "rope_theta": theta,
            "rope_fraction": fraction,
            "qkv_bias": hf["attention_bias"],
            "out_bias": hf["attention_bias"],
        },
        mamba2={
            "d_state": hf["mamba_d_state"],
            "d_conv": hf["mamba_d_conv"],
            "expand": hf["mamba_expand"],
            "head_dim": head_dim,
            "n_groups": hf["mamba_n_groups"],
            "chunk_size": hf["mamba_chunk_size"],
            "dt_limit": tuple(hf["time_step_limit"]),
            "conv_bias": hf["mamba_conv_bias"],
            "proj_bias": hf["mamba_proj_bias"],
            "norm_eps": hf["rms_norm_eps"],
        },
        mlp={"d_ff": hf["intermediate_size"], "activation": "silu", "gated": True, "bias": hf["mlp_bias"]},
    )


def config_to_hf(config: ModelConfig) -> dict:
    layers = hf_layers(config, ffn=True)
    if any(layer not in ("AF", "DF") for layer in layers):
        raise ConfigError(f"bamba layers are AF or DF, not pattern {config.pattern!r}")
    attention, mamba2 = config.attention, config.mamba2
    hf = {
        **decoder_fields(config, len(layers)),
        "attn_layer_indices": [index for index, layer in enumerate(layers) if layer == "AF"],
        "mamba_n_heads": mamba2.expand * config.d_model // mamba2.head_dim,
        "mamba_d_head": mamba2.head_dim,
        "mamba_n_groups": mamba2.n_groups,
        "mamba_d_state": mamba2.d_state,
        "mamba_d_conv": mamba2.d_conv,
        "mamba_expand": mamba2.expand,
        "mamba_chunk_size": mamba2.chunk_size,
        "mamba_conv_bias": mamba2.conv_bias,
        "mamba_proj_bias": mamba2.proj_bias,
        "time_step_limit": list(mamba2.dt_limit),
        "rope_parameters": rope_parameters(config, rotary_to_hf(config)),
        "attention_bias": attention.qkv_bias,
        "mlp_bias": config.mlp.bias,
    }
    return hf


def rules(config: ModelConfig, names: list[str]):
    return decoder_rules(config, names, "D", MAMBA2_NAMES)
