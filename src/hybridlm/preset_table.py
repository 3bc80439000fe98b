"""The preset table: named architectures at three sizes, as plain config fields (no imports of the model).

`tiny` (< 1M parameters, tests), `small` (10-30M, CPU training) and `paper` (the published shape,
analysed on the meta device, never allocated). Tiny and small keep each paper's layout (layer
pattern, ratios, options) at CPU widths and a byte-level vocabulary. Every paper preset cites its
source. `ModelConfig.from_preset` (config.py) builds a config from these fields.
"""

from __future__ import annotations

import difflib

from .errors import ConfigError

SIZES = ("tiny", "small", "paper")
BYTE_VOCAB = 264  # 256 bytes + special tokens (see data/tokenizer.py), a multiple of 8

# name -> (one-line description, {size: config fields}); shared fields go under "base".
PRESETS: dict[str, tuple[str, dict]] = {
    "transformer": (
        "attention + MLP in every layer (r = 1)",
        {
            "tiny": {"pattern": "(AF)*2", "d_model": 64, "n_heads": 4, "mlp": {"d_ff": 128}},
            "small": {"pattern": "(AF)*8", "d_model": 384, "n_heads": 6},
            # Llama-2-7B (Touvron et al. 2023; meta-llama/Llama-2-7b-hf config.json)
            "paper": {
                "pattern": "(AF)*32",
                "d_model": 4096,
                "n_heads": 32,
                "vocab_size": 32000,
                "tie_embeddings": False,
                "mlp": {"d_ff": 11008},
            },
        },
    ),
    "mamba": (
        "Mamba-1 selective SSM only (r = 0)",
        {
            "tiny": {"pattern": "(M)*3", "d_model": 64, "mamba": {"d_state": 8}},
            "small": {"pattern": "(M)*16", "d_model": 384},
            # Mamba-2.8B (Gu & Dao 2023; state-spaces/mamba-2.8b config: 64 layers, d 2560, vocab 50277 -> 50280)
            "paper": {"pattern": "(M)*64", "d_model": 2560, "vocab_size": 50280},
        },
    ),
    "mamba2": (
        "Mamba-2 (SSD) only (r = 0)",
        {
            "tiny": {"pattern": "(D)*3", "d_model": 64, "mamba2": {"d_state": 16, "head_dim": 16}},
            "small": {"pattern": "(D)*16", "d_model": 384},
            # Mamba-2-2.7B (Dao & Gu 2024; state-spaces/mamba2-2.7b config: d_state 128, headdim 64, vocab -> 50288)
            "paper": {
                "pattern": "(D)*64",
                "d_model": 2560,
                "vocab_size": 50288,
                "mamba2": {"d_state": 128, "head_dim": 64, "chunk_size": 256},
            },
        },
    ),
    "jamba": (
        "Mamba + 1 attention per 8 layers (offset 4), MoE every 2nd layer, no positional encoding",
        {
            "base": {
                "pattern": "(MF ME MF ME AF ME MF ME)*4",
                "norm_eps": 1e-6,
                "attention": {"rope": False},
                "mamba": {"inner_norms": True},
                "moe": {"n_experts": 16, "top_k": 2, "aux_loss_coef": 1e-3},
            },
            "tiny": {
                "pattern": "MF ME MF ME AF ME MF ME",
                "d_model": 48,
                "n_heads": 4,
                "n_kv_heads": 2,
                "mlp": {"d_ff": 96},
                "moe": {"n_experts": 4},
                "mamba": {"d_state": 8},
            },
            "small": {
                "pattern": "(MF ME MF ME AF ME MF ME)*2",
                "d_model": 256,
                "n_heads": 8,
                "n_kv_heads": 2,
                "mlp": {"d_ff": 384},
                "moe": {"n_experts": 8},
            },
            # Jamba-v0.1 (Lieber et al. 2024; ai21labs/Jamba-v0.1 config.json): 52B total, 12B active
            "paper": {
                "d_model": 4096,
                "n_heads": 32,
                "n_kv_heads": 8,
                "vocab_size": 65536,
                "tie_embeddings": False,
                "mlp": {"d_ff": 14336},
                "mamba": {"dt_rank": 256},
            },
        },
    ),
    "zamba": (
        "Mamba-1 with one shared attention+MLP block every 6 Mamba layers, fed [x, embeddings]",
        {
            "base": {"shared": {"n_blocks": 1, "activation": "gelu"}},
            "tiny": {
                "pattern": "(M M SM)*2",
                "d_model": 64,
                "n_heads": 4,
                "mlp": {"d_ff": 128},
                "mamba": {"d_state": 8},
            },
            "small": {"pattern": "(M M M M M SM)*2", "d_model": 384, "n_heads": 6},
            # Zamba-7B (Glorioso et al. 2024; Zyphra/Zamba-7B-v1 config.json): 76 Mamba layers, the
            # shared block before layers 2, 7, 13, ..., 73; 2 Mamba heads; tied embeddings.
            "paper": {
                "pattern": "M M SM (M)*4 SM (M M M M M SM)*11 M M",
                "d_model": 3712,
                "n_heads": 16,
                "vocab_size": 32000,
                "mlp": {"d_ff": 14848},
                "mamba": {"n_heads": 2, "dt_rank": 232},
            },
        },
    ),
    "zamba2": (
        "Mamba-2 with two shared blocks cycled A, B, A, B and per-invocation LoRA adapters",
        {
            "base": {
                "shared": {"n_blocks": 2, "activation": "gelu", "lora_mlp": True},
                "mamba2": {"dt_limit": (1e-3, float("inf"))},  # Zamba2 clamps dt at time_step_min
            },
            "tiny": {
                "pattern": "(D D SD)*2",
                "d_model": 64,
                "n_heads": 4,
                "mlp": {"d_ff": 128},
                "mamba2": {"d_state": 16, "head_dim": 16},
                "shared": {"lora_rank": 4, "lora_attention": True},
            },
            "small": {
                "pattern": "(D D D D D SD)*2",
                "d_model": 384,
                "n_heads": 6,
                "shared": {"lora_rank": 16, "lora_attention": True},
            },
            # Zamba2-2.7B (Zyphra 2024, arXiv 2411.15242; Zyphra/Zamba2-2.7B config.json): 54 Mamba-2
            # layers, hybrid ids 6, 12, ..., 42, 47, 51; 2 blocks; MLP adapters of rank 128.
            "paper": {
                "pattern": "D (D D D D D SD)*7 D D D D SD D D D SD D D",
                "d_model": 2560,
                "n_heads": 32,
                "vocab_size": 32000,
                "mlp": {"d_ff": 10240},
                "mamba2": {"d_state": 64, "head_dim": 64, "chunk_size": 256},
                "shared": {"lora_rank": 128, "lora_attention": False},
            },
        },
    ),
    "griffin": (
        "(recurrent, recurrent, local MQA attention) repeated, gated GeLU MLP x3",
        {
            "base": {
                "n_kv_heads": 1,
                "norm_eps": 1e-6,
                "norm_offset": True,
                "logit_softcap": 30.0,
                "embedding_scale_bf16": True,
                "attention": {"rope_fraction": 0.5, "out_bias": True},
                "mlp": {"activation": "gelu_tanh", "bias": True},
            },
            "tiny": {
                "pattern": "RF RF LF",
                "d_model": 64,
                "n_heads": 4,
                "mlp": {"d_ff": 192},
                "attention": {"window": 16},
            },
            "small": {
                "pattern": "(RF RF LF)*4",
                "d_model": 384,
                "n_heads": 6,
                "mlp": {"d_ff": 1152},
                "attention": {"window": 128},
            },
            # Griffin-7B (De et al. 2024, Table 2: D 4096, D_RNN 5632, 32 layers, MLP x3, window 1024);
            # RecurrentGemma's 256k vocabulary, 32 gate blocks as in HF RecurrentGemma
            "paper": {
                "pattern": "(RF RF LF)*10 RF RF",
                "d_model": 4096,
                "n_heads": 32,
                "vocab_size": 256000,
                "mlp": {"d_ff": 12288},
                "rglru": {"width": 5632},
                "attention": {"window": 1024},
            },
        },
    ),
    "hawk": (
        "Griffin's recurrent block only (r = 0)",
        {
            "base": {
                "norm_eps": 1e-6,
                "norm_offset": True,
                "logit_softcap": 30.0,
                "embedding_scale_bf16": True,
                "mlp": {"activation": "gelu_tanh", "bias": True},
            },
            "tiny": {"pattern": "(RF)*3", "d_model": 64, "n_heads": 4, "mlp": {"d_ff": 192}},
            "small": {"pattern": "(RF)*12", "d_model": 384, "n_heads": 6, "mlp": {"d_ff": 1152}},
            # Hawk-7B (De et al. 2024, Table 2: same widths as Griffin-7B, recurrent blocks only)
            "paper": {
                "pattern": "(RF)*32",
                "d_model": 4096,
                "n_heads": 32,
                "vocab_size": 256000,
                "mlp": {"d_ff": 12288},
                "rglru": {"width": 5632},
            },
        },
    ),
    "stripedhyena": (
        "Hyena and attention layers alternating (r = 1/2)",
        {
            "tiny": {"pattern": "(HF AF)*2", "d_model": 64, "n_heads": 4, "mlp": {"d_ff": 128}},
            "small": {"pattern": "(HF AF)*6", "d_model": 384, "n_heads": 6},
            # StripedHyena-7B (Together 2023; togethercomputer/stripedhyena configs/7b-sh-32k-v0.1.yml):
            # 16 Hyena + 16 GQA attention layers, 2 poles per channel, RoPE base 500000; 7.65B parameters
            "paper": {
                "pattern": "(HF AF)*16",
                "d_model": 4096,
                "n_heads": 32,
                "n_kv_heads": 8,
                "vocab_size": 32000,
                "tie_embeddings": False,
                "mlp": {"d_ff": 14336},
                "attention": {"rope_theta": 500000.0},
                "hyena": {"n_modes": 2},
            },
        },
    ),
    "samba": (
        "Mamba and sliding-window attention alternating, an MLP after each",
        {
            "tiny": {
                "pattern": "(MF LF)*2",
                "d_model": 64,
                "n_heads": 4,
                "mlp": {"d_ff": 128},
                "mamba": {"d_state": 8},
                "attention": {"window": 16},
            },
            "small": {"pattern": "(MF LF)*6", "d_model": 384, "n_heads": 6, "attention": {"window": 128}},
            # Samba-421M (Ren et al. 2024, arXiv 2406.07522; microsoft/Samba lit_gpt/config.py "Samba_421M"):
            # 12 layers (6 Mamba + 6 SWA), d 1536, 12 heads, MLP 4096, window 2048, vocab 32000, tied
            "paper": {
                "pattern": "(MF LF)*6",
                "d_model": 1536,
                "n_heads": 12,
                "vocab_size": 32000,
                "mlp": {"d_ff": 4096},
                "attention": {"window": 2048},
            },
        },
    ),
    "blend": (
        "alpha-blend: Mamba and attention in parallel in every layer, alpha learned per channel",
        {
            "base": {"blend": {"ssm": "M", "attn": "A"}},
            "tiny": {"pattern": "(PF)*2", "d_model": 64, "n_heads": 4, "mlp": {"d_ff": 128}, "mamba": {"d_state": 8}},
            "small": {"pattern": "(PF)*8", "d_model": 320, "n_heads": 5},
            # No published model uses this exact mix; the widths follow Samba-421M's
            "paper": {"pattern": "(PF)*12", "d_model": 1536, "n_heads": 12, "vocab_size": 32000, "mlp": {"d_ff": 4096}},
        },
    ),
}


def presets() -> list[str]:
    """The base names of all presets (sizes: tiny, small, paper)."""
    return list(PRESETS)


def preset_description(name: str) -> str:
    return _lookup(name)[0]


def preset_fields(name: str, size: str) -> dict:
    """The config fields of preset `name` at `size`: the byte vocabulary, then "base", then the size's own."""
    _, sizes = _lookup(name)
    check_size(size)
    fields: dict = {"vocab_size": BYTE_VOCAB}
    _merge(fields, sizes.get("base", {}))
    _merge(fields, sizes[size])
    return fields


def check_size(size: str) -> None:
    """A one-line ConfigError naming the sizes, unless `size` is one of them."""
    if size not in SIZES:
        raise ConfigError(f"unknown size {size!r}: choose one of {', '.join(SIZES)}")


def refuse_paper(size: str, verb: str) -> None:
    """The one-line refusal of `--size paper` for a verb that would allocate the model."""
    if size == "paper":
        raise ConfigError(
            f"--size paper is the published shape (up to billions of weights) and {verb} would allocate it; "
            "use --size tiny or small (inspect and analyze read paper sizes without weights)"
        )


def _lookup(name: str):
    if name not in PRESETS:
        match = difflib.get_close_matches(name, list(PRESETS), n=1, cutoff=0.5)
        hint = f"; did you mean '{match[0]}'?" if match else ""
        raise ConfigError(f"unknown preset {name!r}{hint} (presets: {', '.join(PRESETS)})")
    return PRESETS[name]


def _merge(target: dict, source: dict) -> None:
    for key, value in source.items():
        if isinstance(value, dict):
            target.setdefault(key, {})
            _merge(target[key], value)
        else:
            target[key] = value
