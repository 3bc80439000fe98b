"""`mamba` (MambaForCausalLM): Mamba-1 layers only, `backbone.` prefix.

transformers' layer: h = h + mixer(RMSNorm(h)); in_proj rows are [x | z] halves as ours; x_proj and
dt_proj are nn.Linear (our tensors carry a leading head axis of size 1). The conv activation is
`hidden_act`, the gate is always SiLU; ours uses SiLU for both, so only `hidden_act="silu"` imports.
"""

from __future__ import annotations

from ..config import ConfigError, ModelConfig
from .common import compact_pattern, dt_rank, require, with_defaults
from .rules import MAMBA1_NAMES, backbone_rules

MODEL_TYPE = "mamba"
ARCHITECTURE = "MambaForCausalLM"
DEFAULTS = {
    "model_type": MODEL_TYPE,
    "vocab_size": 50280,
    "hidden_size": 768,
    "state_size": 16,
    "num_hidden_layers": 32,
    "layer_norm_epsilon": 1e-5,
    "expand": 2,
    "conv_kernel": 4,
    "use_bias": False,
    "use_conv_bias": True,
    "hidden_act": "silu",
    "time_step_rank": "auto",
    "time_step_min": 0.001,
    "time_step_max": 0.1,
    "time_step_floor": 1e-4,
    "tie_word_embeddings": True,
}
LEGACY_NAMES = {"backbone.embedding.weight": "backbone.embeddings.weight"}  # mamba_ssm's own checkpoints


def config_from_hf(hf: dict) -> ModelConfig:
    hf = with_defaults(hf, DEFAULTS)
    require(hf, "hidden_act", "silu", "hybridlm's Mamba uses SiLU after the conv")
    return ModelConfig(
        pattern=compact_pattern(["M"] * hf["num_hidden_layers"]),
        d_model=hf["hidden_size"],
        vocab_size=hf["vocab_size"],
        n_heads=1,
        norm_eps=hf["layer_norm_epsilon"],
        tie_embeddings=hf["tie_word_embeddings"],
        mamba={
            "d_state": hf["state_size"],
            "d_conv": hf["conv_kernel"],
            "expand": hf["expand"],
            "dt_rank": dt_rank(hf, "time_step_rank"),
            "dt_min": hf["time_step_min"],
            "dt_max": hf["time_step_max"],
            "dt_init_floor": hf["time_step_floor"],
            "conv_bias": hf["use_conv_bias"],
            "proj_bias": hf["use_bias"],
        },
    )


def config_to_hf(config: ModelConfig) -> dict:
    if set(config.chars) != {"M"}:
        raise ConfigError(f"mamba holds Mamba layers only, not pattern {config.pattern!r}")
    mamba = config.mamba
    return {
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "state_size": mamba.d_state,
        "num_hidden_layers": len(config.chars),
        "layer_norm_epsilon": config.norm_eps,
        "expand": mamba.expand,
        "intermediate_size": mamba.expand * config.d_model,
        "conv_kernel": mamba.d_conv,
        "use_bias": mamba.proj_bias,
        "use_conv_bias": mamba.conv_bias,
        "hidden_act": "silu",
        "time_step_rank": config.mamba.rank(config),
        "time_step_min": mamba.dt_min,
        "time_step_max": mamba.dt_max,
        "time_step_floor": mamba.dt_init_floor,
        "tie_word_embeddings": config.tie_embeddings,
    }


def rules(config: ModelConfig, names: list[str]):
    return backbone_rules(config, names, MAMBA1_NAMES)
