"""`zamba2` (Zamba2ForCausalLM): Mamba-2 plus `num_mem_blocks` shared blocks with LoRA adapters.

Layers are "mamba" (our `D`) or "hybrid" (our `SD`); the k-th hybrid layer uses shared block
k % num_mem_blocks (A, B, A, B ...), like our `S` ordinal. Each hybrid layer has its own adapters:
on the fused MLP gate/up projection always (rank `adapter_rank`), on q, k, v when
`use_shared_attention_adapter`. A block and every adapter slot it owns are saved once, under the
first hybrid layer that uses the block: adapter k lives in block k % num_mem_blocks as
`...adapter_list.{k}`. Untied (`tie_word_embeddings` false) every hybrid layer owns its block, so
ours has one block per hybrid layer; the adapter slots a layer does not use are never read.
Numerics: attention scale (head_dim / 2)^-0.5, optional full-width RoPE (`use_mem_rope`),
gated-norm eps fixed at 1e-5, conv bias always on, dt clamped to [time_step_min, inf)
(transformers clamps only in prefill; we clamp in every path).
"""

from __future__ import annotations

import re

import torch

from ..config import ConfigError, ModelConfig
from .common import (
    ACTIVATIONS_TO_HF,
    activation,
    compact_pattern,
    hf_layers,
    require,
    rope_fields,
    rope_parameters,
    with_defaults,
)
from .rules import MAMBA2_NAMES, Rule, prefixed, rename
from .zamba import block_types, check_shared_heads, check_untied_blocks, layer_types, shared_block_count

MODEL_TYPE = "zamba2"
ARCHITECTURE = "Zamba2ForCausalLM"
GATED_NORM_EPS = 1e-5  # hard-coded in transformers' Zamba2 mixer
MAMBA, HYBRID = ["mamba"], ["hybrid"]
DEFAULT_LAYOUT = MAMBA + (MAMBA * 5 + HYBRID) * 7 + MAMBA * 4 + HYBRID + MAMBA * 3 + HYBRID + MAMBA * 2  # 54 layers
DEFAULTS = {
    "model_type": MODEL_TYPE,
    "vocab_size": 32000,
    "hidden_size": 2560,
    "num_hidden_layers": 54,
    "layers_block_type": DEFAULT_LAYOUT,
    "mamba_d_state": 64,
    "mamba_d_conv": 4,
    "mamba_expand": 2,
    "mamba_ngroups": 1,
    "time_step_min": 0.001,
    "time_step_max": 0.1,
    "time_step_floor": 1e-4,
    "n_mamba_heads": 8,
    "chunk_size": 256,
    "add_bias_linear": False,
    "hidden_act": "gelu",
    "num_attention_heads": 32,
    "num_mem_blocks": 1,
    "use_shared_attention_adapter": False,
    "adapter_rank": 128,
    "use_mem_rope": False,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
}
TIED_COPIES = re.compile(r"\.shared_transformer\.")
SHARED_NAMES = {
    "input_norm.weight": "input_layernorm.weight",
    "attention.q_proj.weight": "self_attn.q_proj.weight",
    "attention.k_proj.weight": "self_attn.k_proj.weight",
    "attention.v_proj.weight": "self_attn.v_proj.weight",
    "attention.o_proj.weight": "self_attn.o_proj.weight",
    "ff_norm.weight": "pre_ff_layernorm.weight",
    "mlp.gate_proj.weight": None,  # fused with up_proj into feed_forward.gate_up_proj
    "mlp.up_proj.weight": None,
    "mlp.down_proj.weight": "feed_forward.down_proj.weight",
}


def config_from_hf(hf: dict) -> ModelConfig:
    hf = with_defaults(hf, DEFAULTS)
    require(hf, "add_bias_linear", False, "hybridlm's shared MLP has no biases")
    check_shared_heads(hf)
    hidden, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    d_inner = hf["mamba_expand"] * hidden
    if d_inner % hf["n_mamba_heads"]:
        raise ConfigError("zamba2: n_mamba_heads must divide mamba_expand * hidden_size")
    theta, _ = rope_fields(hf)  # transformers' Zamba2 RoPE ignores partial_rotary_factor
    layers = block_types(hf, "D")
    return ModelConfig(
        pattern=compact_pattern(layers),
        d_model=hidden,
        vocab_size=hf["vocab_size"],
        n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        norm_eps=hf["rms_norm_eps"],
        tie_embeddings=hf["tie_word_embeddings"],
        attention={"rope_theta": theta, "head_dim": 2 * hidden // n_heads},  # no plain attention layers here
        mamba2={
            "d_state": hf["mamba_d_state"],
            "d_conv": hf["mamba_d_conv"],
            "expand": hf["mamba_expand"],
            "head_dim": d_inner // hf["n_mamba_heads"],
            "n_groups": hf["mamba_ngroups"],
            "chunk_size": hf["chunk_size"],
            "dt_min": hf["time_step_min"],
            "dt_max": hf["time_step_max"],
            "dt_init_floor": hf["time_step_floor"],
            "dt_limit": (hf["time_step_min"], float("inf")),
            "conv_bias": True,
            "proj_bias": False,
            "norm_eps": GATED_NORM_EPS,
        },
        shared={
            "n_blocks": shared_block_count(hf, layers, hf["num_mem_blocks"]),
            "n_kv_heads": hf.get("num_key_value_heads") or n_heads,
            "d_ff": hf.get("intermediate_size") or 4 * hidden,
            "activation": activation(hf, "hidden_act"),
            "rope": hf["use_mem_rope"],
            "lora_rank": hf["adapter_rank"],
            "lora_attention": hf["use_shared_attention_adapter"],
            "lora_mlp": True,
        },
    )


def config_to_hf(config: ModelConfig) -> dict:
    types = layer_types(config, "D", "zamba2")
    check_untied_blocks(config, "zamba2")
    mamba2, shared = config.mamba2, config.shared
    if mamba2.dt_limit[0] <= 0:
        raise ConfigError("zamba2 clamps dt at time_step_min > 0: set mamba2.dt_limit=(0.001, inf) as Zamba2 does")
    if "S" in config.chars and not (shared.lora_rank and shared.lora_mlp):
        raise ConfigError("zamba2 always has MLP adapters: set shared.lora_rank > 0 and shared.lora_mlp=true")
    if shared.lora_attention and config.shared.kv_heads(config) != config.shared.heads(config):
        raise ConfigError("transformers' Zamba2 k/v adapters are 2 * d_model wide: GQA needs lora_attention=false")
    return {
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "num_hidden_layers": len(types),
        "layers_block_type": types,
        "mamba_d_state": mamba2.d_state,
        "mamba_d_conv": mamba2.d_conv,
        "mamba_expand": mamba2.expand,
        "mamba_ngroups": mamba2.n_groups,
        "time_step_min": mamba2.dt_limit[0],
        "time_step_max": mamba2.dt_max,
        "time_step_floor": mamba2.dt_init_floor,
        "n_mamba_heads": mamba2.expand * config.d_model // mamba2.head_dim,
        "chunk_size": mamba2.chunk_size,
        "add_bias_linear": False,
        "intermediate_size": shared.d_ff or config.mlp.width(config),
        "hidden_act": ACTIVATIONS_TO_HF[shared.activation],
        "num_attention_heads": config.shared.heads(config),
        "num_key_value_heads": config.shared.kv_heads(config),
        "num_mem_blocks": shared.n_blocks,
        "use_shared_attention_adapter": shared.lora_attention,
        "adapter_rank": shared.lora_rank,
        "use_mem_rope": shared.rope,
        "rope_parameters": rope_parameters(config),
        "rms_norm_eps": config.norm_eps,
        "tie_word_embeddings": config.tie_embeddings,
    }


def _split_gate_up(fused: torch.Tensor):
    return tuple(fused.chunk(2))


def _fuse_gate_up(gate: torch.Tensor, up: torch.Tensor):
    return (torch.cat([gate, up]),)


def rules(config: ModelConfig, names: list[str]):
    found = [
        rename("embed_tokens.weight", "model.embed_tokens.weight"),
        rename("final_norm.weight", "model.final_layernorm.weight"),
    ]
    n_blocks, index, hybrid = config.shared.n_blocks, 0, 0
    home: dict[int, str] = {}  # shared block -> prefix of the first hybrid layer using it
    for layer, chars in enumerate(hf_layers(config, ffn=False)):
        prefix = f"model.layers.{layer}."
        if chars == "SD":
            block = hybrid % n_blocks
            home.setdefault(block, prefix + "shared_transformer.")
            found += adapter_rules(index, hybrid, home[block], names)
            found.append(rename(f"layers.{index}.mixer.linear.weight", prefix + "linear.weight"))
            index, prefix, hybrid = index + 1, prefix + "mamba_decoder.", hybrid + 1
        found.append(rename(f"layers.{index}.norm.weight", prefix + "input_layernorm.weight"))
        found += prefixed(names, f"layers.{index}.mixer.", prefix + "mamba.", MAMBA2_NAMES)
        index += 1
    for block, block_prefix in home.items():
        ours = f"shared_blocks.{block}."
        found += prefixed(names, ours, block_prefix, SHARED_NAMES)
        gate_up = (ours + "mlp.gate_proj.weight", ours + "mlp.up_proj.weight")
        found.append(Rule(gate_up, (block_prefix + "feed_forward.gate_up_proj.weight",), _split_gate_up, _fuse_gate_up))
    return found


def adapter_rules(index: int, hybrid: int, block_prefix: str, names: list[str]) -> list[Rule]:
    """The adapters of our `index`-th sub-layer (the `hybrid`-th S), stored in slot `hybrid` of its block."""
    table = {f"mlp_adapter.{i}.weight": f"feed_forward.gate_up_proj_adapter_list.{hybrid}.{i}.weight" for i in (0, 1)}
    for position, projection in enumerate("qkv"):
        for i in (0, 1):
            their = f"self_attn.linear_{projection}_adapter_list.{hybrid}.{i}.weight"
            table[f"attention_adapters.{position}.{i}.weight"] = their
    ours = f"layers.{index}.mixer."
    return prefixed([name for name in names if name.startswith(ours) and "adapter" in name], ours, block_prefix, table)
