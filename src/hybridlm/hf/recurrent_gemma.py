"""`recurrent_gemma` (RecurrentGemmaForCausalLM): Griffin, and Hawk when block_types has no attention.

`block_types` is cycled over the layers: "recurrent" -> our `RF`, "attention" -> `LF` (local
attention). The numerics to reproduce:
- embeddings times sqrt(hidden_size) held as a bf16 tensor (sqrt(2560) = 50.596 becomes 50.5):
  `embedding_scale` with `embedding_scale_bf16`;
- RMSNorm weights as (1 + w) (`norm_offset`), eps 1e-6; logits soft-capped c * tanh(logits / c);
- attention: RoPE on the first `partial_rotary_factor` (0.5) of head_dim (rounded as transformers
  rounds it, see `common.rotary_from_hf`), head_dim = hidden / heads unless config.json sets
  `head_dim`, no q/k/v bias but an
  o_proj bias, a window of `attention_window_size` keys *including the query itself*
  (transformers' mask keeps key j for query i when i - window < j <= i), which is exactly our
  `attention.window`;
- the MLP is `intermediate_size // 2` wide with biases on all three projections;
- RG-LRU gates are block-diagonal with one block per attention head, c = 8, and the recurrence
  restarts where position == 0. `recurrent_param` is our `a_param` (log a = -c r softplus(a_param)).
"""

from __future__ import annotations

import math

from ..config import ConfigError, ModelConfig
from .common import (
    ACTIVATIONS_TO_HF,
    activation,
    compact_pattern,
    hf_layers,
    rope_fields,
    rope_parameters,
    rotary_from_hf,
    rotary_to_hf,
    with_defaults,
)
from .rules import prefixed, rename

MODEL_TYPE = "recurrent_gemma"
ARCHITECTURE = "RecurrentGemmaForCausalLM"
DEFAULTS = {
    "model_type": MODEL_TYPE,
    "num_hidden_layers": 26,
    "vocab_size": 256000,
    "hidden_size": 2560,
    "intermediate_size": 3 * 2560,
    "num_attention_heads": 10,
    "attention_window_size": 2048,
    "conv1d_width": 4,
    "logits_soft_cap": 30.0,
    "rms_norm_eps": 1e-6,
    "hidden_activation": "gelu_pytorch_tanh",
    "block_types": ["recurrent", "recurrent", "attention"],
    "attention_bias": False,
    "tie_word_embeddings": True,
}
RECURRENT_NAMES = {
    "linear_y.weight": "linear_y.weight",
    "linear_y.bias": "linear_y.bias",
    "linear_x.weight": "linear_x.weight",
    "linear_x.bias": "linear_x.bias",
    "linear_out.weight": "linear_out.weight",
    "linear_out.bias": "linear_out.bias",
    "conv.weight": "conv_1d.weight",
    "conv.bias": "conv_1d.bias",
    "rg_lru.a_param": "rg_lru.recurrent_param",
    "rg_lru.input_gate_weight": "rg_lru.input_gate_weight",
    "rg_lru.input_gate_bias": "rg_lru.input_gate_bias",
    "rg_lru.recurrent_gate_weight": "rg_lru.recurrent_gate_weight",
    "rg_lru.recurrent_gate_bias": "rg_lru.recurrent_gate_bias",
}
BLOCK_CHARS = {"recurrent": "RF", "attention": "LF"}


def config_from_hf(hf: dict) -> ModelConfig:
    if "sliding_window" in hf and "attention_window_size" not in hf:
        hf = {**hf, "attention_window_size": hf["sliding_window"]}
    hf = with_defaults(hf, DEFAULTS)
    unknown = sorted(set(hf["block_types"]) - set(BLOCK_CHARS))
    if unknown or not hf["block_types"]:
        raise ConfigError(f"recurrent_gemma: block_types must hold 'recurrent' / 'attention', got {hf['block_types']}")
    if not hf["logits_soft_cap"]:
        raise ConfigError("recurrent_gemma: logits_soft_cap must be a positive number (transformers divides by it)")
    hidden, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    lru_width = hf.get("lru_width") or hidden
    if lru_width % n_heads:
        raise ConfigError(f"recurrent_gemma: lru_width={lru_width} must be a multiple of num_attention_heads={n_heads}")
    cycled = (list(hf["block_types"]) * hf["num_hidden_layers"])[: hf["num_hidden_layers"]]
    head_dim = hf.get("head_dim") or hidden // n_heads  # transformers honours an explicit head_dim
    theta, fraction = rotary_from_hf(MODEL_TYPE, head_dim, *rope_fields(hf, default_fraction=0.5))
    act = activation(hf, "hidden_activation")
    return ModelConfig(
        pattern=compact_pattern([BLOCK_CHARS[kind] for kind in cycled]),
        d_model=hidden,
        vocab_size=hf["vocab_size"],
        n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        norm_eps=hf["rms_norm_eps"],
        norm_offset=True,
        tie_embeddings=hf["tie_word_embeddings"],
        embedding_scale=math.sqrt(hidden),
        embedding_scale_bf16=True,
        logit_softcap=hf["logits_soft_cap"],
        attention={
            "head_dim": head_dim,
            "rope": True,
            "rope_theta": theta,
            "rope_fraction": fraction,
            "window": hf["attention_window_size"],
            "qkv_bias": hf["attention_bias"],
            "out_bias": True,
        },
        rglru={
            "width": lru_width,
            "n_heads": n_heads,
            "d_conv": hf["conv1d_width"],
            "c": 8.0,
            "bias": True,
            "activation": act,
        },
        mlp={"d_ff": hf["intermediate_size"] // 2, "activation": act, "gated": True, "bias": True},
    )


def smallest_cycle(kinds: list[str]) -> list[str]:
    """The shortest list whose repetition, cut to len(kinds), gives `kinds` (transformers cycles block_types)."""
    for period in range(1, len(kinds) + 1):
        if all(kind == kinds[index % period] for index, kind in enumerate(kinds)):
            return kinds[:period]
    return kinds


def config_to_hf(config: ModelConfig) -> dict:
    layers = hf_layers(config, ffn=True)
    names = {chars: kind for kind, chars in BLOCK_CHARS.items()}
    if any(layer not in names for layer in layers):
        raise ConfigError(f"recurrent_gemma layers are RF or LF, not pattern {config.pattern!r}")
    if config.rglru.activation != config.mlp.activation:
        raise ConfigError("recurrent_gemma uses one activation for the recurrent branch and the MLP")
    attention = config.attention
    return {
        "num_hidden_layers": len(layers),
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": 2 * config.mlp.width(config),
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.attention.head_size(config),
        "lru_width": config.rglru.lru_width(config),
        "attention_window_size": attention.window,
        "conv1d_width": config.rglru.d_conv,
        "logits_soft_cap": config.logit_softcap,
        "rms_norm_eps": config.norm_eps,
        "hidden_activation": ACTIVATIONS_TO_HF[config.mlp.activation],
        "rope_parameters": rope_parameters(config, rotary_to_hf(config)),
        "block_types": smallest_cycle([names[layer] for layer in layers]),
        "attention_bias": attention.qkv_bias,
        "tie_word_embeddings": config.tie_embeddings,
    }


def rules(config: ModelConfig, names: list[str]):
    found = [
        rename("embed_tokens.weight", "model.embed_tokens.weight"),
        rename("final_norm.weight", "model.final_norm.weight"),
    ]
    for layer in range(len(config.chars) // 2):
        mixer, ffn, prefix = 2 * layer, 2 * layer + 1, f"model.layers.{layer}."
        found.append(rename(f"layers.{mixer}.norm.weight", prefix + "temporal_pre_norm.weight"))
        found.append(rename(f"layers.{ffn}.norm.weight", prefix + "channel_pre_norm.weight"))
        table = RECURRENT_NAMES if config.chars[mixer] == "R" else None
        found += prefixed(names, f"layers.{mixer}.mixer.", prefix + "temporal_block.", table)
        found += prefixed(names, f"layers.{ffn}.mixer.", prefix + "mlp_block.")
    return found
