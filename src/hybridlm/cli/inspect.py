"""`hybridlm inspect`: the expanded per-layer table and parameter counts, without training.

With an analysis flag it runs the model on an input instead (a checkpoint's weights, or random
weights for a preset or pattern): `--mixing` (token-mixing matrices), `--gradient-flow`
(||dL/dx|| through depth), `--memory-length` (SSM decay half-lives), `--routing` (MoE load).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config import ConfigError
from ..pattern import format_pattern
from .common import add_model_flags, format_table, plot_path, resolve_config

HELP = "expanded per-layer table and parameter count; --mixing, --gradient-flow, ... analyse a model on an input"


def add_arguments(parser) -> None:
    parser.add_argument("target", help="checkpoint directory, preset name, or layer pattern such as '(MF ME AF)*2'")
    add_model_flags(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    analysis = parser.add_argument_group("analyses on an input (random weights unless TARGET is a checkpoint)")
    mode = analysis.add_mutually_exclusive_group()
    mode.add_argument("--mixing", action="store_true", help="each mixer's N x N token-mixing matrix")
    mode.add_argument("--gradient-flow", action="store_true", help="||dL/dx_l|| at every sub-layer's input")
    mode.add_argument("--memory-length", action="store_true", help="decay half-lives of SSM states, in tokens")
    mode.add_argument("--routing", action="store_true", help="MoE per-expert load, router entropy, collapse")
    analysis.add_argument("--layers", help="sub-layer indices (the # column), comma-separated; default: all mixers")
    analysis.add_argument("--group", type=int, help="--mixing: one head/channel instead of the mean over them")
    analysis.add_argument("--prompt", help="input text (the checkpoint's tokenizer, else bytes)")
    analysis.add_argument("--seq-len", type=int, default=64, help="length of the random input without --prompt")
    analysis.add_argument("--batch", type=int, default=4, help="random rows for --gradient-flow and --routing")
    analysis.add_argument("--seed", type=int, default=0, help="seed of random weights and inputs")
    analysis.add_argument("--plot", metavar="FILE", type=plot_path, help="write the analysis' figure")


ANALYSES = ("mixing", "gradient_flow", "memory_length", "routing")


def run(args) -> None:
    chosen = [name for name in ANALYSES if getattr(args, name)]
    if chosen:
        model, input_ids = _model_and_input(args)
        {"mixing": _mixing, "gradient_flow": _gradient_flow, "memory_length": _memory, "routing": _routing}[chosen[0]](
            model, input_ids, args
        )
        return
    if args.plot:
        raise ConfigError("--plot needs an analysis: --mixing, --gradient-flow, --memory-length or --routing")
    _table(args)


def _table(args) -> None:
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


def _model_and_input(args):
    import torch

    from ..checkpoint import load
    from ..data.tokenizer import ByteTokenizer, load_tokenizer
    from ..model import HybridLM

    if Path(args.target).is_dir():
        if args.overrides:
            raise ConfigError("--set does not apply to a checkpoint directory (its weights fix the config)")
        model, tokenizer = load(args.target), load_tokenizer(args.target)
    else:
        if args.size == "paper":
            raise ConfigError("paper presets are never allocated: use --size tiny or small, or a checkpoint directory")
        config = resolve_config(args.target, args.size, args.overrides)
        torch.manual_seed(args.seed)
        model, tokenizer = HybridLM(config), ByteTokenizer()
    model.eval()
    if args.prompt is not None:
        ids = tokenizer.encode(args.prompt)
        if len(ids) < 2:
            raise ConfigError("--prompt must encode to at least 2 tokens")
        return model, torch.tensor([ids])
    if args.seq_len < 2 or args.batch < 1:
        raise ConfigError("--seq-len must be >= 2 and --batch >= 1")
    generator = torch.Generator().manual_seed(args.seed)
    vocab = min(model.config.vocab_size, 256)
    return model, torch.randint(0, vocab, (args.batch, args.seq_len), generator=generator)


def _layers(args) -> list[int] | None:
    if not args.layers:
        return None
    try:
        return [int(part) for part in args.layers.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--layers {args.layers!r}: give comma-separated sub-layer indices, e.g. 0,4") from None


def _mixing(model, input_ids, args) -> None:
    from ..analysis.mixing import mixing_matrices, mixing_summary

    try:
        pairs = mixing_matrices(model, input_ids, _layers(args), args.group)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if args.plot:
        from ..analysis.plots import plot_mixing

        plot_mixing(pairs, args.plot)
    rows = []
    for mixing, matrix in pairs:
        operator = mixing.operator
        which = f"{operator.group_name} {args.group}" if args.group is not None else f"mean of {operator.n_groups}"
        rows.append({"index": mixing.index, "kind": mixing.kind, "groups": which, **mixing_summary(matrix)})
        if args.json:
            rows[-1]["matrix"] = matrix.tolist()
    if args.json:
        print(json.dumps(rows))
    else:
        print(f"token-mixing matrices on {input_ids.shape[1]} tokens (row 0)")
        print(
            format_table(
                ["#", "mixer", "matrix", "mean distance", "within 4 tokens"],
                [
                    [r["index"], r["kind"], r["groups"], f"{r['mean_distance']:.2f}", f"{r['local_share']:.1%}"]
                    for r in rows
                ],
            )
        )
    _wrote(args)


def _gradient_flow(model, input_ids, args) -> None:
    from ..analysis.gradient_flow import gradient_flow

    loss, rows = gradient_flow(model, input_ids)
    if args.plot:
        from ..analysis.plots import plot_gradient_flow

        plot_gradient_flow(rows, args.plot, title=f"gradient norm through depth (loss {loss:.3f})")
    if args.json:
        print(json.dumps({"loss": loss, "layers": [row.__dict__ for row in rows]}))
    else:
        print(f"loss {loss:.4f} on {input_ids.shape[0]} x {input_ids.shape[1]} tokens; x_l = input of sub-layer l")
        print(
            format_table(
                ["#", "char", "sub-layer", "||dL/dx||", "per token"],
                [[r.index, r.char, r.kind, f"{r.grad_norm:.3e}", f"{r.per_token:.3e}"] for r in rows],
            )
        )
    _wrote(args)


def _memory(model, input_ids, args) -> None:
    from ..analysis.memory_length import memory_lengths

    rows = memory_lengths(model, input_ids)
    if not rows:
        raise ConfigError("the model has no SSM-type layer (no sub-layer with a decaying state)")
    if args.plot:
        from ..analysis.plots import plot_memory_lengths

        plot_memory_lengths(rows, args.plot)
    summaries = [
        {"index": r.index, "kind": r.kind, "unit": r.unit, "count": r.half_lives.numel(), **r.quantiles()} for r in rows
    ]
    if args.json:
        print(json.dumps(summaries))
    else:
        print(f"decay half-lives in tokens on {input_ids.shape[1]} tokens (row 0)")
        headers = ["#", "mixer", "per", "count", "min", "p10", "median", "p90", "max"]
        keys = ["min", "p10", "median", "p90", "max"]
        print(
            format_table(
                headers,
                [[s["index"], s["kind"], s["unit"], s["count"]] + [f"{s[k]:.3g}" for k in keys] for s in summaries],
            )
        )
    _wrote(args)


def _routing(model, input_ids, args) -> None:
    from ..analysis.routing import route

    rows = route(model, input_ids)
    if not rows:
        raise ConfigError("the model has no MoE layer (no sub-layer with a router)")
    if args.plot:
        from ..analysis.plots import plot_routing

        plot_routing(rows, args.plot)
    if args.json:
        print(json.dumps([row.__dict__ for row in rows]))
    else:
        print(f"MoE routing on {input_ids.numel()} tokens")
        print(
            format_table(
                ["#", "experts", "load entropy", "router entropy", "max load / share", "unused", "aux", "collapsing"],
                [
                    [
                        r.index,
                        f"top-{r.top_k} of {r.n_experts}",
                        f"{r.load_entropy:.3f}",
                        f"{r.router_entropy:.3f}",
                        f"{r.max_load_ratio:.2f}",
                        r.dead_experts,
                        f"{r.aux:.3f}",
                        "yes" if r.collapsed else "no",
                    ]
                    for r in rows
                ],
            )
        )
    _wrote(args)


def _wrote(args) -> None:
    if args.plot and not args.json:
        print(f"\nwrote {args.plot}")
