"""`hybridlm presets`: the table of presets (layers, attention ratio, parameters) and docs/presets.md."""

from __future__ import annotations

import json

from ..config import ModelConfig
from ..pattern import format_pattern
from ..presets import SIZES, preset_config, preset_description, presets
from .common import format_table, human, shorten

HELP = "table of presets: layers, attention ratio r, parameters"


def add_arguments(parser) -> None:
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--markdown", action="store_true", help="every size's dimensions as a Markdown table")


def run(args) -> None:
    from ..analysis.params import build_meta, summary

    if args.markdown:
        print(presets_markdown())
        return
    rows = []
    for name in presets():
        config = preset_config(name, args.size)
        info = summary(build_meta(config))
        rows.append(
            {"preset": name, "pattern": format_pattern(config.pattern), **info, "description": preset_description(name)}
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(
        format_table(
            ["preset", "layers", "r", "params", "active", "pattern"],
            [
                [
                    r["preset"],
                    r["layers"],
                    f"{r['attention_ratio']:.3f}",
                    human(r["params"]),
                    human(r["active_params"]),
                    shorten(r["pattern"], 48),
                ]
                for r in rows
            ],
        )
    )
    print(
        f"\nsize: {args.size} (others: {', '.join(s for s in SIZES if s != args.size)}); "
        "layers = mixers; r = attention share of mixers (A L S P)"
    )


def presets_markdown() -> str:
    """docs/presets.md's table: every preset at every size, with the dimensions that define it."""
    from ..analysis.params import build_meta, summary

    lines = [
        "| preset | size | pattern | layers | r | d_model | heads (kv) | d_ff | vocab | mixer options | params |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in presets():
        for size in SIZES:
            config = preset_config(name, size)
            info = summary(build_meta(config))
            params = human(info["params"])
            if info["active_params"] != info["params"]:
                params += f" ({human(info['active_params'])} active)"
            chars = set(config.chars)
            heads = f"{config.n_heads} ({config.kv_heads})" if chars & set("ALP") else "-"
            heads = f"{config.shared.n_heads or config.n_heads} (shared)" if "S" in chars else heads
            d_ff = config.d_ff if chars & set("FES") else "-"
            lines.append(
                f"| {name} | {size} | `{format_pattern(config.pattern)}` | {info['layers']} | "
                f"{info['attention_ratio']:.3f} | {config.d_model} | {heads} | "
                f"{d_ff} | {config.vocab_size} | {_mixer_options(config)} | {params} |"
            )
    return "\n".join(lines)


def _mixer_options(config: ModelConfig) -> str:
    chars, options = config.chars + (config.blend.ssm + config.blend.attn if "P" in config.chars else ""), []
    if "M" in chars:
        options.append(
            f"mamba N={config.mamba.d_state} r={config.dt_rank}"
            + (f" heads={config.mamba.n_heads}" if config.mamba.n_heads > 1 else "")
            + (" dt/B/C norms" if config.mamba.inner_norms else "")
        )
    if "D" in chars:
        options.append(f"mamba2 N={config.mamba2.d_state} P={config.mamba2.head_dim}")
    if "R" in chars:
        options.append(f"rglru w={config.rnn_width}")
    if "H" in chars:
        options.append(f"hyena modes={config.hyena.n_modes}")
    if "L" in chars:
        options.append(f"window={config.attention.window}")
    if "E" in chars:
        options.append(f"moe {config.moe.top_k}/{config.moe.n_experts}")
    if "S" in chars:
        options.append(
            f"shared x{config.shared.n_blocks}"
            + (f" lora={config.shared.lora_rank}" if config.shared.lora_rank else "")
        )
    if set(chars) & set("ALSP") and not config.attention.rope:
        options.append("no RoPE")
    return ", ".join(options)
