"""`zamba` (ZambaForCausalLM, Zamba v1): multi-head Mamba-1 plus one shared attention block.

transformers' layer is "mamba" (our `M`) or "hybrid" (our `SM`): the shared block reads
concat(h, embeddings), attends with scale (head_dim / 2)^-0.5 and no RoPE, runs its MLP with no
residuals inside, and a per-layer `linear` turns the result into t; the Mamba then runs on
RMSNorm(h + t) while the residual stays h. Differences in layout from plain Mamba:
- `in_proj` rows interleave x and z (even rows x, odd rows z); ours holds [x | z] halves;
- x_proj / dt_proj / A_log / D are per head ((H, ...) tensors); ours keeps A_log and D flat.
The shared block is saved once, under the first hybrid layer (later copies are tied and dropped).
transformers ties those copies only when `tie_word_embeddings` is true; otherwise every hybrid
layer owns its block, and so does ours (`shared.n_blocks` = the number of hybrid layers).
"""

from __future__ import annotations

import re

import torch

from ..config import ConfigError, ModelConfig
from .common import ACTIVATIONS_TO_HF, activation, compact_pattern, dt_rank, hf_layers, require, with_defaults
from .rules import prefixed, rename

MODEL_TYPE = "zamba"
ARCHITECTURE = "ZambaForCausalLM"
DEFAULTS = {
    "model_type": MODEL_TYPE,
    "vocab_size": 32000,
    "tie_word_embeddings": True,
    "hidden_size": 3712,
    "intermediate_size": 14848,
    "num_hidden_layers": 76,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "n_mamba_heads": 2,
    "hidden_act": "gelu",
    "hidden_mamba_act": "silu",
    "rms_norm_eps": 1e-5,
    "attn_layer_period": 6,
    "attn_layer_offset": 4,
    "mamba_d_state": 16,
    "mamba_d_conv": 4,
    "mamba_expand": 2,
    "mamba_dt_rank": "auto",
    "time_step_min": 0.001,
    "time_step_max": 0.1,
    "time_step_floor": 1e-4,
    "mamba_conv_bias": True,
    "mamba_proj_bias": False,
}
TIED_COPIES = re.compile(r"\.shared_transf\.")  # per-layer copies of the shared block, if a file holds them
SHARED_NAMES = {
    "input_norm.weight": "input_layernorm.weight",
    "attention.q_proj.weight": "self_attn.q_proj.weight",
    "attention.k_proj.weight": "self_attn.k_proj.weight",
    "attention.v_proj.weight": "self_attn.v_proj.weight",
    "attention.o_proj.weight": "self_attn.o_proj.weight",
    "ff_norm.weight": "pre_ff_layernorm.weight",
    "mlp.gate_proj.weight": "feed_forward.gate_proj.weight",
    "mlp.up_proj.weight": "feed_forward.up_proj.weight",
    "mlp.down_proj.weight": "feed_forward.down_proj.weight",
}


def block_types(hf: dict, mamba_name: str) -> list[str]:
    """`layers_block_type` as our layer strings: mamba / linear_attention -> M (or D), hybrid -> S + it."""
    types = hf.get("layers_block_type")
    if types is None:  # transformers' default layout for Zamba v1
        period, offset = hf["attn_layer_period"], hf["attn_layer_offset"]
        rest = range(hf["num_hidden_layers"] - 3)
        types = ["mamba", "mamba", "hybrid"] + ["hybrid" if i % period == offset else "mamba" for i in rest]
    layers = []
    for kind in types:
        if kind not in ("mamba", "linear_attention", "hybrid"):
            raise ConfigError(f"{hf['model_type']}: layers_block_type entry {kind!r} is not mamba or hybrid")
        layers.append(("S" if kind == "hybrid" else "") + mamba_name)
    return layers


def shared_block_count(hf: dict, layers: list[str], tied_blocks: int) -> int:
    """transformers ties the hybrid layers' shared blocks only under `tie_word_embeddings`
    (`get_expanded_tied_weights_keys`); untied, each hybrid layer owns a block of its own."""
    hybrid = sum(layer.startswith("S") for layer in layers)
    return max(1, min(tied_blocks, hybrid) if hf["tie_word_embeddings"] else hybrid)


def hybrid_count(config: ModelConfig) -> int:
    return config.chars.count("S")


def check_untied_blocks(config: ModelConfig, family: str) -> None:
    hybrid = hybrid_count(config)
    if not config.tie_embeddings and hybrid and config.shared.n_blocks != hybrid:
        raise ConfigError(
            f"{family} with tie_word_embeddings=false gives each hybrid layer its own shared block: "
            f"needs shared.n_blocks={hybrid}, not {config.shared.n_blocks}"
        )


def check_shared_heads(hf: dict) -> None:
    """Our shared block splits its 2 * hidden_size input width evenly over the heads."""
    hidden, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    if 2 * hidden % n_heads:
        raise ConfigError(
            f"{hf['model_type']}: num_attention_heads={n_heads} must divide 2 * hidden_size = {2 * hidden} "
            "(hybridlm's shared block splits its input evenly over the heads)"
        )


def config_from_hf(hf: dict) -> ModelConfig:
    hf = with_defaults(hf, DEFAULTS)
    check_shared_heads(hf)
    require(hf, "hidden_mamba_act", "silu", "hybridlm's Mamba uses SiLU after the conv")
    layers = block_types(hf, "M")
    hidden, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("attention_hidden_size", 2 * hidden) != 2 * hidden:
        raise ConfigError(
            "zamba: attention_hidden_size must be 2 * hidden_size (the block reads concat(h, embeddings))"
        )
    if hf.get("attention_head_dim", 2 * hidden // n_heads) != 2 * hidden // n_heads:
        raise ConfigError("zamba: attention_head_dim must be 2 * hidden_size // num_attention_heads")
    return ModelConfig(
        pattern=compact_pattern(layers),
        d_model=hidden,
        vocab_size=hf["vocab_size"],
        n_heads=n_heads,
        attention={"head_dim": 2 * hidden // n_heads},  # no plain attention layers: hidden need not divide by heads
        n_kv_heads=hf["num_key_value_heads"],
        norm_eps=hf["rms_norm_eps"],
        tie_embeddings=hf["tie_word_embeddings"],
        mamba={
            "d_state": hf["mamba_d_state"],
            "d_conv": hf["mamba_d_conv"],
            "expand": hf["mamba_expand"],
            "dt_rank": dt_rank(hf, "mamba_dt_rank"),
            "dt_min": hf["time_step_min"],
            "dt_max": hf["time_step_max"],
            "dt_init_floor": hf["time_step_floor"],
            "conv_bias": hf["mamba_conv_bias"],
            "proj_bias": hf["mamba_proj_bias"],
            "n_heads": hf["n_mamba_heads"],
        },
        shared={
            "n_blocks": shared_block_count(hf, layers, 1),
            "n_kv_heads": hf["num_key_value_heads"],
            "d_ff": hf["intermediate_size"],
            "activation": activation(hf, "hidden_act"),
        },
    )


def layer_types(config: ModelConfig, mamba_char: str, family: str) -> list[str]:
    layers = hf_layers(config, ffn=False)
    if any(layer not in (mamba_char, "S" + mamba_char) for layer in layers):
        raise ConfigError(f"{family} layers are {mamba_char} or S{mamba_char}, not pattern {config.pattern!r}")
    return ["hybrid" if layer.startswith("S") else "linear_attention" for layer in layers]


def config_to_hf(config: ModelConfig) -> dict:
    types = layer_types(config, "M", "zamba")
    check_untied_blocks(config, "zamba")
    mamba, shared = config.mamba, config.shared
    return {
        "vocab_size": config.vocab_size,
        "tie_word_embeddings": config.tie_embeddings,
        "hidden_size": config.d_model,
        "intermediate_size": shared.d_ff or config.mlp.width(config),
        "num_hidden_layers": len(types),
        "layers_block_type": types,
        "num_attention_heads": config.shared.heads(config),
        "num_key_value_heads": config.shared.kv_heads(config),
        "n_mamba_heads": mamba.n_heads,
        "hidden_act": ACTIVATIONS_TO_HF[shared.activation],
        "hidden_mamba_act": "silu",
        "rms_norm_eps": config.norm_eps,
        "mamba_d_state": mamba.d_state,
        "mamba_d_conv": mamba.d_conv,
        "mamba_expand": mamba.expand,
        "mamba_dt_rank": config.mamba.rank(config),
        "time_step_min": mamba.dt_min,
        "time_step_max": mamba.dt_max,
        "time_step_floor": mamba.dt_init_floor,
        "mamba_conv_bias": mamba.conv_bias,
        "mamba_proj_bias": mamba.proj_bias,
    }


def _interleave(halves: torch.Tensor) -> torch.Tensor:
    """[x | z] halves -> rows x_0, z_0, x_1, z_1, ... (transformers' Zamba in_proj)."""
    x, z = halves.chunk(2)
    return torch.stack([x, z], dim=1).flatten(0, 1)


def _deinterleave(rows: torch.Tensor) -> torch.Tensor:
    return torch.cat([rows[0::2], rows[1::2]])


def mamba_names(n_heads: int) -> dict:
    def per_head(t):
        return t.reshape(n_heads, -1, *t.shape[1:])

    def flat(t):
        return t.flatten(0, 1)

    return {
        "in_proj.weight": ("in_proj.weight", _deinterleave, _interleave),
        "in_proj.bias": ("in_proj.bias", _deinterleave, _interleave),
        "conv.weight": "conv1d.weight",
        "conv.bias": "conv1d.bias",
        "x_proj_weight": "x_proj_weight",
        "dt_proj_weight": "dt_proj_weight",
        "dt_proj_bias": "dt_proj_bias",
        "A_log": ("A_log", flat, per_head),
        "D": ("D", flat, per_head),
        "out_proj.weight": "out_proj.weight",
        "out_proj.bias": "out_proj.bias",
    }


def rules(config: ModelConfig, names: list[str]):
    found = [
        rename("embed_tokens.weight", "model.embed_tokens.weight"),
        rename("final_norm.weight", "model.final_layernorm.weight"),
    ]
    table = mamba_names(config.mamba.n_heads)
    index, hybrid = 0, 0
    home: dict[int, int] = {}  # shared block -> the first hybrid layer using it (block k: the k-th, untied)
    for layer, chars in enumerate(hf_layers(config, ffn=False)):
        prefix = f"model.layers.{layer}."
        if chars == "SM":
            home.setdefault(hybrid % config.shared.n_blocks, layer)
            found.append(rename(f"layers.{index}.mixer.linear.weight", prefix + "linear.weight"))
            index, prefix, hybrid = index + 1, prefix + "mamba_decoder.", hybrid + 1
        found.append(rename(f"layers.{index}.norm.weight", prefix + "input_layernorm.weight"))
        found += prefixed(names, f"layers.{index}.mixer.", prefix + "mamba.", table)
        index += 1
    for block, layer in home.items():
        found += prefixed(names, f"shared_blocks.{block}.", f"model.layers.{layer}.shared_transf.", SHARED_NAMES)
    return found
