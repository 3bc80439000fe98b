"""Config helpers every family shares: defaults, activations, RoPE fields, patterns, numerics.

`numerics(config)` lists the resolved options that change what a model computes, for the
sub-layers it uses; export writes a Hugging Face config, reads it back and requires the same
numerics, so a model that a family cannot express is refused instead of silently changed.
"""

from __future__ import annotations

import math

from ..config import ConfigError, ModelConfig

ACTIVATIONS_FROM_HF = {
    "silu": "silu",
    "swish": "silu",
    "gelu": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",  # tanh approximation written out; equal to torch's to ~1e-7
    "relu": "relu",
}
ACTIVATIONS_TO_HF = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}


def with_defaults(hf: dict, defaults: dict) -> dict:
    """config.json over the family's transformers defaults; explicit nulls take the default too."""
    merged = dict(defaults)
    merged.update({key: value for key, value in hf.items() if value is not None})
    return merged


def activation(hf: dict, key: str) -> str:
    name = hf[key]
    if name not in ACTIVATIONS_FROM_HF:
        choices = ", ".join(sorted(ACTIVATIONS_FROM_HF))
        raise ConfigError(f"{hf['model_type']}: {key}={name!r} is not supported (use one of {choices})")
    return ACTIVATIONS_FROM_HF[name]


def require(hf: dict, key: str, allowed, why: str) -> None:
    if hf[key] != allowed:
        raise ConfigError(f"{hf['model_type']}: {key}={hf[key]!r} is not supported ({why})")


def dt_rank(hf: dict, key: str) -> int:
    value = hf[key]
    return math.ceil(hf["hidden_size"] / 16) if value == "auto" else int(value)


def rope_fields(hf: dict, default_fraction: float = 1.0, top_level_fraction: bool = True) -> tuple[float, float]:
    """(theta, partial rotary fraction) from `rope_parameters` (or legacy `rope_scaling` / top level).

    `top_level_fraction=False`: a top-level `partial_rotary_factor` is ignored (Bamba's config
    overwrites it with its hard-coded 0.5)."""
    parameters = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = parameters.get("rope_type", parameters.get("type", "default"))
    if rope_type != "default":
        raise ConfigError(f"{hf['model_type']}: rope_type={rope_type!r} is not supported (only 'default' RoPE)")
    theta = parameters.get("rope_theta", hf.get("rope_theta", 10000.0))
    fallback = hf.get("partial_rotary_factor", default_fraction) if top_level_fraction else default_fraction
    fraction = parameters.get("partial_rotary_factor", fallback)
    return float(theta), float(fraction)


def our_rotary_dim(head_dim: int, fraction: float) -> int:
    """The features our RoPE rotates (layers/rope.py): 2 * floor(head_dim * fraction / 2)."""
    return 2 * int(head_dim * fraction // 2)


def _fraction_for(head_dim: int, rotated: int, exact) -> float:
    """A fraction f with exact(f) true, preferring the plain rotated / head_dim."""
    plain = rotated / head_dim
    return plain if exact(plain) else min(1.0, (rotated + 0.5) / head_dim)


def rotary_from_hf(model_type: str, head_dim: int, theta: float, fraction: float) -> tuple[float, float]:
    """Our (rope_theta, rope_fraction) for transformers' partial RoPE.

    transformers takes d = int(head_dim * partial_rotary_factor), frequencies theta^(-2i/d) for
    i < ceil(d/2), and rotates the first 2 * ceil(d/2) features. For an even d that is our RoPE of
    fraction d / head_dim; for an odd d it rotates r = d + 1 features with theta^(-2i/d) =
    (theta^(r/d))^(-2i/r): our RoPE of width r and base theta^(r/d), the same function (to fp32
    rounding of the frequencies, ~1e-7 relative)."""
    dim = int(head_dim * fraction)
    rotated = dim + dim % 2
    if dim == 0 or rotated > head_dim:
        raise ConfigError(
            f"{model_type}: partial_rotary_factor={fraction} with head_dim {head_dim} rotates {rotated} features "
            "(transformers needs 1 to head_dim)"
        )
    if rotated != dim:
        theta = theta ** (rotated / dim)
    if our_rotary_dim(head_dim, fraction) != rotated:
        fraction = _fraction_for(head_dim, rotated, lambda f: our_rotary_dim(head_dim, f) == rotated)
    return theta, fraction


def rotary_to_hf(config: ModelConfig) -> float:
    """The partial_rotary_factor with which transformers rotates the features ours does (an even count)."""
    head_dim, fraction = config.attention.head_size(config), config.attention.rope_fraction
    rotated = our_rotary_dim(head_dim, fraction)
    if int(head_dim * fraction) == rotated or rotated == 0:  # 0: transformers cannot rotate nothing
        return fraction
    return _fraction_for(head_dim, rotated, lambda f: int(head_dim * f) == rotated)


def rope_parameters(config: ModelConfig, fraction: float | None = None) -> dict:
    parameters = {"rope_type": "default", "rope_theta": config.attention.rope_theta}
    if fraction is not None:
        parameters["partial_rotary_factor"] = fraction
    return parameters


def compact_pattern(layers: list[str]) -> str:
    """A readable pattern for a list of per-layer strings: the shortest `(block)*K tail` spelling."""
    best = " ".join(layers)
    for period in range(1, len(layers) // 2 + 1):
        block = layers[:period]
        repeats = 1
        while layers[repeats * period : (repeats + 1) * period] == block:
            repeats += 1
        if repeats > 1:
            tail = layers[repeats * period :]
            spelled = f"({' '.join(block)})*{repeats}" + (" " + compact_pattern(tail) if tail else "")
            if len(spelled) < len(best):
                best = spelled
    return best


def hf_layers(config: ModelConfig, ffn: bool) -> list[str]:
    """Our sub-layers grouped into transformers' layers: a mixer (after a pending `S`) and, when
    `ffn`, the F/E that follows it. Raises when the pattern does not group that way."""
    chars, layers, index = config.chars, [], 0
    while index < len(chars):
        start = index
        if chars[index] == "S":
            index += 1
        index += 1  # the mixer
        if ffn:
            if index >= len(chars) or chars[index] not in "FE":
                raise ConfigError(f"pattern {config.pattern!r}: every mixer needs an F or E after it here")
            index += 1
        layers.append(chars[start:index])
    return layers


def decoder_fields(config: ModelConfig, n_layers: int) -> dict:
    """The transformers fields Jamba and Bamba share: sizes, SwiGLU MLP, GQA attention, norm eps."""
    fields = {
        "vocab_size": config.vocab_size,
        "tie_word_embeddings": config.tie_embeddings,
        "hidden_size": config.d_model,
        "intermediate_size": config.mlp.width(config),
        "num_hidden_layers": n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.kv_heads,
        "hidden_act": "silu",
        "rms_norm_eps": config.norm_eps,
    }
    if config.attention.head_dim is not None:
        fields["head_dim"] = config.attention.head_dim
    return fields


def numerics(config: ModelConfig) -> dict:
    """The resolved options that change the function a model computes, for the sub-layers it uses."""
    chars = set(config.chars)
    values = {
        "layers": config.chars,
        "d_model": config.d_model,
        "vocab_size": config.vocab_size,
        "norm_eps": config.norm_eps,
        "norm_offset": config.norm_offset,
        "tie_embeddings": config.tie_embeddings,
        "embedding_scale": config.embedding_scale,
        "embedding_scale_bf16": config.embedding_scale_bf16 and config.embedding_scale is not None,
        "logit_softcap": config.logit_softcap or None,
    }
    attention = config.attention
    if chars & set("AL"):
        values.update(
            {
                "n_heads": config.n_heads,
                "n_kv_heads": config.kv_heads,
                "head_dim": config.attention.head_size(config),
                "attention.rope": attention.rope,
                "attention.scale": attention.scale or config.attention.head_size(config) ** -0.5,
                "attention.qkv_bias": attention.qkv_bias,
                "attention.out_bias": attention.out_bias,
            }
        )
        if attention.rope:
            rotary_dim = our_rotary_dim(attention.head_size(config), attention.rope_fraction)
            values.update({"attention.rope_theta": attention.rope_theta, "attention.rotary_dim": rotary_dim})
        if "L" in chars:
            values["attention.window"] = attention.window
    if "M" in chars:
        mamba = config.mamba
        values.update({f"mamba.{key}": getattr(mamba, key) for key in ("d_state", "d_conv", "expand", "conv_bias")})
        values.update({f"mamba.{key}": getattr(mamba, key) for key in ("proj_bias", "n_heads", "inner_norms")})
        values["mamba.dt_rank"] = config.mamba.rank(config)
    if "D" in chars:
        fields = ("d_state", "d_conv", "expand", "head_dim", "n_groups", "chunk_size", "dt_limit", "conv_bias")
        values.update({f"mamba2.{key}": getattr(config.mamba2, key) for key in (*fields, "proj_bias", "norm_eps")})
    if "R" in chars:
        rglru = config.rglru
        values.update({"rglru.width": config.rglru.lru_width(config), "rglru.n_heads": rglru.n_heads or config.n_heads})
        values.update({f"rglru.{key}": getattr(rglru, key) for key in ("d_conv", "c", "bias", "activation")})
    if chars & set("FE"):
        values.update(
            {
                "mlp.d_ff": config.mlp.width(config),
                **{f"mlp.{key}": getattr(config.mlp, key) for key in ("activation", "gated", "bias")},
            }
        )
    if "E" in chars:
        moe = config.moe
        values.update(
            {"moe.d_ff": moe.d_ff or config.mlp.width(config), "moe.n_experts": moe.n_experts, "moe.top_k": moe.top_k}
        )
        values.update({"moe.normalize_top_k": moe.normalize_top_k, "moe.aux_loss_coef": moe.aux_loss_coef})
    if "S" in chars:
        values.update(_shared_numerics(config))
    return values


def _shared_numerics(config: ModelConfig) -> dict:
    shared = config.shared
    values = {
        "shared.n_blocks": shared.n_blocks,
        "shared.n_heads": config.shared.heads(config),
        "shared.n_kv_heads": config.shared.kv_heads(config),
        "shared.d_ff": shared.d_ff or config.mlp.width(config),
        "shared.activation": shared.activation,
        "shared.rope": shared.rope,
        "shared.scale": shared.scale or (config.shared.head_size(config) / 2) ** -0.5,
        "shared.lora_rank": shared.lora_rank,
    }
    if shared.rope:
        values["attention.rope_theta"] = config.attention.rope_theta
    if shared.lora_rank:
        values.update({"shared.lora_attention": shared.lora_attention, "shared.lora_mlp": shared.lora_mlp})
    return values


def differences(ours: dict, theirs: dict) -> list[str]:
    """`key=ours (as theirs)` for every option that differs, sorted."""
    keys = sorted(ours.keys() | theirs.keys())
    return [f"{key}={ours.get(key)!r} (as {theirs.get(key)!r})" for key in keys if ours.get(key) != theirs.get(key)]
