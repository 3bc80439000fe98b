"""`mamba2` (Mamba2ForCausalLM): Mamba-2 layers only, `backbone.` prefix.

Same in_proj layout as ours, [z | xBC | dt]; the gated RMSNorm uses `layer_norm_epsilon` like the
block norms. transformers clamps dt to `time_step_limit` only in its chunked (prefill) path, ours
in every path; with the default (0, inf) the two agree everywhere.
"""

from __future__ import annotations

from ..config import ConfigError, ModelConfig
from .common import compact_pattern, require, with_defaults
from .rules import MAMBA2_NAMES, backbone_rules

MODEL_TYPE = "mamba2"
ARCHITECTURE = "Mamba2ForCausalLM"
DEFAULTS = {
    "model_type": MODEL_TYPE,
    "num_heads": 128,
    "head_dim": 64,
    "vocab_size": 32768,
    "hidden_size": 4096,
    "state_size": 128,
    "num_hidden_layers": 64,
    "layer_norm_epsilon": 1e-5,
    "expand": 2,
    "conv_kernel": 4,
    "n_groups": 8,
    "use_bias": False,
    "use_conv_bias": True,
    "hidden_act": "silu",
    "time_step_min": 0.001,
    "time_step_max": 0.1,
    "time_step_floor": 1e-4,
    "time_step_limit": (0.0, float("inf")),
    "chunk_size": 256,
    "tie_word_embeddings": False,
}


def config_from_hf(hf: dict) -> ModelConfig:
    hf = with_defaults(hf, DEFAULTS)
    require(hf, "hidden_act", "silu", "hybridlm's Mamba-2 uses SiLU after the conv")
    if hf["expand"] * hf["hidden_size"] != hf["num_heads"] * hf["head_dim"]:
        raise ConfigError("mamba2: expand * hidden_size must equal num_heads * head_dim")
    return ModelConfig(
        pattern=compact_pattern(["D"] * hf["num_hidden_layers"]),
        d_model=hf["hidden_size"],
        vocab_size=hf["vocab_size"],
        n_heads=1,
        norm_eps=hf["layer_norm_epsilon"],
        tie_embeddings=hf["tie_word_embeddings"],
        mamba2={
            "d_state": hf["state_size"],
            "d_conv": hf["conv_kernel"],
            "expand": hf["expand"],
            "head_dim": hf["head_dim"],
            "n_groups": hf["n_groups"],
            "chunk_size": hf["chunk_size"],
            "dt_min": hf["time_step_min"],
            "dt_max": hf["time_step_max"],
            "dt_init_floor": hf["time_step_floor"],
            "dt_limit": tuple(hf["time_step_limit"]),
            "conv_bias": hf["use_conv_bias"],
            "proj_bias": hf["use_bias"],
            "norm_eps": hf["layer_norm_epsilon"],
        },
    )


def config_to_hf(config: ModelConfig) -> dict:
    if set(config.chars) != {"D"}:
        raise ConfigError(f"mamba2 holds Mamba-2 layers only, not pattern {config.pattern!r}")
    mamba2 = config.mamba2
    return {
        "num_heads": mamba2.expand * config.d_model // mamba2.head_dim,
        "head_dim": mamba2.head_dim,
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "state_size": mamba2.d_state,
        "num_hidden_layers": len(config.chars),
        "layer_norm_epsilon": config.norm_eps,
        "expand": mamba2.expand,
        "conv_kernel": mamba2.d_conv,
        "n_groups": mamba2.n_groups,
        "use_bias": mamba2.proj_bias,
        "use_conv_bias": mamba2.conv_bias,
        "hidden_act": "silu",
        "time_step_min": mamba2.dt_min,
        "time_step_max": mamba2.dt_max,
        "time_step_floor": mamba2.dt_init_floor,
        "time_step_limit": list(mamba2.dt_limit),
        "chunk_size": mamba2.chunk_size,
        "tie_word_embeddings": config.tie_embeddings,
    }


def rules(config: ModelConfig, names: list[str]):
    return backbone_rules(config, names, MAMBA2_NAMES)
