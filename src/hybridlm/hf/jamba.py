"""`jamba` (JambaForCausalLM): Mamba-1 with RMSNorms on dt, B, C, attention without RoPE, MoE.

transformers' layer j is a mixer (attention when j % attn_layer_period == attn_layer_offset, else
Mamba) and an FFN (MoE when j % expert_layer_period == expert_layer_offset and num_experts > 1,
else a SwiGLU MLP): our `MF`, `ME`, `AF` or `AE`. The router is a softmax over all experts, then
top-k, not renormalised (`moe.normalize_top_k=False`). Experts are stored one tensor per expert
(`feed_forward.experts.{e}.gate_proj.weight`), the layout transformers writes and reads; in memory
it fuses them. `hidden_act` drives both the MLP and the Mamba conv, so it must be SiLU.
"""

from __future__ import annotations

from ..config import ConfigError, ModelConfig
from .common import activation, compact_pattern, decoder_fields, dt_rank, hf_layers, require, with_defaults
from .rules import MAMBA1_NAMES, decoder_rules

MODEL_TYPE = "jamba"
ARCHITECTURE = "JambaForCausalLM"
DEFAULTS = {
    "model_type": MODEL_TYPE,
    "vocab_size": 65536,
    "tie_word_embeddings": False,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "router_aux_loss_coef": 0.001,
    "num_experts_per_tok": 2,
    "num_experts": 16,
    "expert_layer_period": 2,
    "expert_layer_offset": 1,
    "attn_layer_period": 8,
    "attn_layer_offset": 4,
    "mamba_d_state": 16,
    "mamba_d_conv": 4,
    "mamba_expand": 2,
    "mamba_dt_rank": "auto",
    "mamba_conv_bias": True,
    "mamba_proj_bias": False,
}


def config_from_hf(hf: dict) -> ModelConfig:
    if "num_experts" not in hf and "num_local_experts" in hf:
        hf = {**hf, "num_experts": hf["num_local_experts"]}
    hf = with_defaults(hf, DEFAULTS)
    require(hf, "hidden_act", "silu", "Jamba's Mamba conv uses hidden_act and hybridlm's Mamba uses SiLU")
    layers = []
    for index in range(hf["num_hidden_layers"]):
        attention = index % hf["attn_layer_period"] == hf["attn_layer_offset"]
        experts = hf["num_experts"] > 1 and index % hf["expert_layer_period"] == hf["expert_layer_offset"]
        layers.append(("A" if attention else "M") + ("E" if experts else "F"))
    return ModelConfig(
        pattern=compact_pattern(layers),
        d_model=hf["hidden_size"],
        vocab_size=hf["vocab_size"],
        n_heads=hf["num_attention_heads"],
        n_kv_heads=hf["num_key_value_heads"],
        norm_eps=hf["rms_norm_eps"],
        tie_embeddings=hf["tie_word_embeddings"],
        attention={"rope": False, "head_dim": hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]},
        mamba={
            "d_state": hf["mamba_d_state"],
            "d_conv": hf["mamba_d_conv"],
            "expand": hf["mamba_expand"],
            "dt_rank": dt_rank(hf, "mamba_dt_rank"),
            "conv_bias": hf["mamba_conv_bias"],
            "proj_bias": hf["mamba_proj_bias"],
            "inner_norms": True,
        },
        mlp={"d_ff": hf["intermediate_size"], "activation": activation(hf, "hidden_act"), "gated": True},
        moe={
            "n_experts": hf["num_experts"],
            "top_k": hf["num_experts_per_tok"],
            "aux_loss_coef": hf["router_aux_loss_coef"],
            "normalize_top_k": False,
        },
    )


def period_and_offset(flags: list[bool]) -> tuple[int, int]:
    """The smallest (period, offset) with flags[i] == (i % period == offset); (len + 1, len) when none is set."""
    count = len(flags)
    if not any(flags):
        return count + 1, count
    for period in range(1, count + 1):
        for offset in range(period):
            if all(flag == (index % period == offset) for index, flag in enumerate(flags)):
                return period, offset
    raise ConfigError(f"jamba places layers periodically; this layout is not periodic: {flags}")


def config_to_hf(config: ModelConfig) -> dict:
    layers = hf_layers(config, ffn=True)
    if any(layer[0] not in "MA" for layer in layers):
        raise ConfigError(f"jamba layers are M or A followed by F or E, not pattern {config.pattern!r}")
    attn_period, attn_offset = period_and_offset([layer[0] == "A" for layer in layers])
    expert_period, expert_offset = period_and_offset([layer[1] == "E" for layer in layers])
    has_experts = "E" in config.chars
    mamba, moe = config.mamba, config.moe
    hf = {
        **decoder_fields(config, len(layers)),
        "router_aux_loss_coef": moe.aux_loss_coef,
        "num_experts_per_tok": moe.top_k if has_experts else 1,
        "num_experts": moe.n_experts if has_experts else 1,
        "expert_layer_period": expert_period,
        "expert_layer_offset": expert_offset,
        "attn_layer_period": attn_period,
        "attn_layer_offset": attn_offset,
        "mamba_d_state": mamba.d_state,
        "mamba_d_conv": mamba.d_conv,
        "mamba_expand": mamba.expand,
        "mamba_dt_rank": config.mamba.rank(config),
        "mamba_conv_bias": mamba.conv_bias,
        "mamba_proj_bias": mamba.proj_bias,
    }
    return hf


def rules(config: ModelConfig, names: list[str]):
    return decoder_rules(config, names, "M", MAMBA1_NAMES)
