"""`hybridlm presets`: the table of presets (layers, attention ratio, parameters) and docs/presets.md."""

from __future__ import annotations

import json

from ..config import ModelConfig
from ..layers import FAMILIES, Attention, SharedAttention
from ..layers.registry import attention_chars, sublayer_names
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
    attention = " ".join(char for char in sublayer_names() if char in attention_chars())
    print(
        f"\nsize: {args.size} (others: {', '.join(s for s in SIZES if s != args.size)}); "
        f"layers = mixers; r = attention share of mixers ({attention})"
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
            used = set(config.used_chars)
            heads = f"{config.n_heads} ({config.kv_heads})" if used & set(Attention.chars) else "-"
            heads = f"{config.shared.heads(config)} (shared)" if used & set(SharedAttention.chars) else heads
            ff_users = [family for family in FAMILIES if family.role == "ffn" or family is SharedAttention]
            d_ff = config.mlp.width(config) if any(used & set(family.chars) for family in ff_users) else "-"
            lines.append(
                f"| {name} | {size} | `{format_pattern(config.pattern)}` | {info['layers']} | "
                f"{info['attention_ratio']:.3f} | {config.d_model} | {heads} | "
                f"{d_ff} | {config.vocab_size} | {_mixer_options(config)} | {params} |"
            )
    return "\n".join(lines)


def _mixer_options(config: ModelConfig) -> str:
    """Each family's own summary of its options (`describe_options`), in registration order."""
    used = set(config.used_chars)
    families = [family for family in FAMILIES if used & set(family.chars)]
    return ", ".join(text for family in families if (text := family.describe_options(config)))
