"""`hybridlm inspect`: the expanded per-layer table and parameter counts, without training."""

from __future__ import annotations

import json

from ..pattern import format_pattern
from .common import add_model_flags, format_table, resolve_config

HELP = "expanded per-layer table and parameter count, without training"


def add_arguments(parser) -> None:
    parser.add_argument("target", help="checkpoint directory, preset name, or layer pattern such as '(MF ME AF)*2'")
    add_model_flags(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args) -> None:
    from ..analysis.params import build_meta, layer_rows, params_by_type, summary

    config = resolve_config(args.target, args.size, args.overrides)
    model = build_meta(config)
    rows = layer_rows(model)
    info = summary(model)
    by_type = params_by_type(model)
    if args.json:
        print(
            json.dumps(
                {
                    "pattern": format_pattern(config.pattern),
                    "layer_types": config.layer_types,
                    **info,
                    "params_by_type": by_type,
                    "layers": [row.__dict__ for row in rows],
                    "config": config.to_dict(),
                },
                indent=2,
                default=str,
            )
        )
        return
    print(f"pattern  {format_pattern(config.pattern)}")
    print(f"expanded {config.chars}")
    print(
        f"{info['layers']} layers (mixers), {info['sublayers']} sub-layers, attention ratio r = "
        f"{info['attention_ratio']:.3f}, d_model {config.d_model}, vocab {config.vocab_size}\n"
    )
    print(
        format_table(
            ["#", "char", "sub-layer", "params", "note"],
            [["" if r.index < 0 else r.index, r.char, r.kind, f"{r.params:,}", r.note] for r in rows],
        )
    )
    print("\nparameters by type")
    print(
        format_table(
            ["type", "params", "share"],
            [[kind, f"{count:,}", f"{count / by_type['total']:.1%}"] for kind, count in by_type.items()],
        )
    )
    if info["active_params"] != info["params"]:
        print(f"\nactive per token (MoE top-{config.moe.top_k} of {config.moe.n_experts}): {info['active_params']:,}")
