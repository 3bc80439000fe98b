"""The `hybridlm` command line. Only this module prints and exits; the library returns values.

Errors a user can cause end with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
import time
from pathlib import Path

from .checkpoint import CheckpointError
from .config import ConfigError, ModelConfig, parse_override
from .pattern import PatternError, format_pattern
from .presets import SIZES, preset_config, preset_description, presets

USER_ERRORS = (ConfigError, PatternError, CheckpointError, FileNotFoundError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    try:
        return args.handler(args) or 0
    except USER_ERRORS as error:
        print(f"hybridlm {args.verb}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hybridlm {args.verb}: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hybridlm", description="Build, train, measure and run hybrid Attention x SSM language models."
    )
    verbs = parser.add_subparsers(title="verbs", metavar="VERB")

    def verb(name: str, handler, help_text: str) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler, verb=name)
        return sub

    sub = verb("presets", cmd_presets, "table of presets: layers, attention ratio r, parameters")
    sub.add_argument("--size", choices=SIZES, default="small")
    sub.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_argument("--markdown", action="store_true", help="every size's dimensions as a Markdown table")

    sub = verb("inspect", cmd_inspect, "expanded per-layer table and parameter count, without training")
    sub.add_argument("target", help="checkpoint directory, preset name, or layer pattern such as '(MF ME AF)*2'")
    _add_model_flags(sub)
    sub.add_argument("--json", action="store_true", help="machine-readable output")

    sub = verb("generate", cmd_generate, "sample text from a saved model with its hybrid cache")
    sub.add_argument("directory", help="a directory written by hybridlm.save or `hybridlm train`")
    sub.add_argument("--prompt", required=True)
    sub.add_argument("--max-new-tokens", type=int, default=64)
    sub.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    sub.add_argument("--top-k", type=int, default=None)
    sub.add_argument("--top-p", type=float, default=None)
    sub.add_argument("--seed", type=int, default=None)
    sub.add_argument("--stream", action="store_true", help="print tokens as they are sampled")

    sub = verb("demo", cmd_demo, "a short CPU run over every tiny preset: forward pass and timing")
    sub.add_argument("--seq-len", type=int, default=256)
    return parser


def _add_model_flags(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--size", choices=SIZES, default="small", help="preset size (default: small)")
    sub.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, repeatable, e.g. --set mamba.d_state=8",
    )


def resolve_config(target: str, size: str = "small", overrides: list[str] | None = None) -> ModelConfig:
    """A directory wins, then a preset name, then a layer pattern with the preset dimensions of `size`."""
    from .checkpoint import load_config

    if Path(target).is_dir():
        config = load_config(target)
    elif target in presets():
        config = preset_config(target, size)
    else:
        try:
            format_pattern(target)
        except PatternError as error:
            close = difflib.get_close_matches(target, presets(), n=1)
            hint = f"did you mean the preset {close[0]!r}? " if close else f"presets: {', '.join(presets())}; "
            raise PatternError(
                f"{target!r} is not a checkpoint directory, a preset or a valid pattern ({hint}as a pattern: {error})"
            ) from None
        config = preset_config("transformer", size).with_overrides({"pattern": target})
    return config.with_overrides(dict(parse_override(item) for item in overrides or []))


# ---- verbs ---------------------------------------------------------------------------------------
def cmd_presets(args) -> None:
    from .analysis.params import build_meta, summary

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
                    _shorten(r["pattern"], 48),
                ]
                for r in rows
            ],
        )
    )
    print(
        f"\nsize: {args.size} (others: {', '.join(s for s in SIZES if s != args.size)}); "
        "layers = mixers; r = attention share of mixers (A L S P)"
    )


def cmd_inspect(args) -> None:
    from .analysis.params import build_meta, layer_rows, params_by_type, summary

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


def cmd_generate(args) -> None:
    import torch

    from .checkpoint import load
    from .data.tokenizer import load_tokenizer

    model = load(args.directory)
    tokenizer = load_tokenizer(args.directory)
    prompt = torch.tensor([tokenizer.encode(args.prompt)])
    if prompt.shape[1] == 0:
        raise ConfigError("--prompt is empty")
    sampling = dict(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed, stop_tokens=[tokenizer.eos_id]
    )
    if args.stream:
        print(args.prompt, end="", flush=True)
        pending: list[int] = []
        for tokens in model.stream(prompt, args.max_new_tokens, **sampling):
            token = int(tokens[0])
            if token < 0 or token == tokenizer.eos_id:
                break
            pending.append(token)
            text = tokenizer.decode(pending)
            if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                print(text, end="", flush=True)
                pending = []
        print(tokenizer.decode(pending))
        return
    output = model.generate(prompt, args.max_new_tokens, **sampling)[0].tolist()
    print(tokenizer.decode([t for t in output if t != tokenizer.eos_id]))


def cmd_demo(args) -> None:
    import torch

    from .model import HybridLM

    torch.manual_seed(0)
    cmd_presets(argparse.Namespace(size="tiny", json=False, markdown=False))
    print(f"\nforward pass of every tiny preset, batch 1 x {args.seq_len} tokens (fp32, CPU):")
    rows = []
    for name in presets():
        model = HybridLM(preset_config(name, "tiny")).eval()
        tokens = torch.randint(0, 256, (1, args.seq_len))
        with torch.no_grad():
            model(tokens)  # warm-up
            start = time.perf_counter()
            logits = model(tokens)
            elapsed = time.perf_counter() - start
        rows.append([name, f"{elapsed * 1e3:.1f} ms", f"{args.seq_len / elapsed:,.0f}", tuple(logits.shape)])
    print(format_table(["preset", "forward", "tokens/s", "logits"], rows))


def presets_markdown() -> str:
    """docs/presets.md's table: every preset at every size, with the dimensions that define it."""
    from .analysis.params import build_meta, summary

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


# ---- formatting ----------------------------------------------------------------------------------
def format_table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def human(count: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.2f}{unit}"
    return str(count)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


if __name__ == "__main__":
    sys.exit(main())
