"""`hybridlm demo`: the README's main job, a few-minute CPU run that shows the hybrid thesis
(attention recalls but its cache grows; an SSM's state is fixed but forgets; a hybrid gets both)."""

from __future__ import annotations

from .common import format_table

HELP = "a few-minute CPU run (--quick: under a minute): cache cost vs context, recall of attention / SSM / hybrids"


def add_arguments(parser) -> None:
    parser.add_argument("--quick", action="store_true", help="MQAR at 32 tokens, 4 pairs, 200 steps: under a minute")
    parser.add_argument("--steps", type=int, help="training steps per recall model (default 400; --quick 200)")
    parser.add_argument("--seed", type=int, default=0)


def run(args) -> None:
    import torch

    from ..config import ConfigError
    from ..demo import (
        COST_LENGTHS,
        FULL,
        QUICK,
        RECALL_CACHE_LENGTHS,
        cost_table,
        decoding_matches_forward,
        recall_experiment,
    )

    recipe = dict(QUICK if args.quick else FULL)
    if args.steps is not None:
        if args.steps < 1:
            raise ConfigError(f"--steps must be >= 1, got {args.steps}")
        recipe["steps"] = args.steps

    torch.set_num_threads(1)  # small models: one thread avoids oversubscription on shared 2-core machines
    print("1. Inference cache of one sequence (published shapes, bf16, from their configs)\n")
    rows = cost_table()
    print(
        format_table(
            ["preset"] + [f"N = {n:,}" for n in COST_LENGTHS],
            [[row["preset"]] + [_bytes(row[n]) for n in COST_LENGTHS] for row in rows],
        )
    )
    by_name = {row["preset"]: row for row in rows}
    longest = COST_LENGTHS[-1]
    ratio = by_name["transformer"][longest] / by_name["jamba"][longest]
    print(
        f"\n   At N = {longest:,} Jamba holds {ratio:.0f}x less than the Transformer (1 attention layer in 8, 8 KV"
        " heads of 32); Griffin's window and Mamba's state do not grow with N.\n"
    )

    length = recipe["seq_len"]
    print(
        f"2. Recall: MQAR ({length} tokens, {recipe['n_pairs']} key-value pairs), 2 layers, d = 64, no MLP, "
        f"{recipe['steps']} steps each.\n   Every attention layer (A) has a depthwise causal conv of width 3 "
        "on q, k, v (Based recipe);\n   the RG-LRU block (R) has its own width-4 conv (Griffin). "
        "Caches: one sequence, fp32.\n"
    )
    header = ["model", "pattern", "params", "accuracy", f"cache at {length}"]
    header += [f"cache at {n // 1024}K" for n in RECALL_CACHE_LENGTHS] + ["time"]
    results = recall_experiment(
        **recipe,
        seed=args.seed,
        progress=lambda r: print(f"   {r.name}: accuracy {r.accuracy:.3f} ({r.seconds:.0f} s)", flush=True),
    )
    print()
    print(
        format_table(
            header,
            [
                [r.name, r.pattern, f"{r.params:,}", f"{r.accuracy:.3f}", _bytes(r.state_bytes)]
                + [_bytes(r.long_cache_bytes[n]) for n in RECALL_CACHE_LENGTHS]
                + [f"{r.seconds:.0f} s"]
                for r in results
            ],
        )
    )
    accuracy = {r.pattern: r.accuracy for r in results}
    cache = {r.pattern: r.long_cache_bytes[RECALL_CACHE_LENGTHS[-1]] for r in results}
    print(
        f"\n   One attention layer lifts the SSM from {accuracy['R R']:.2f} to {accuracy['R A']:.2f} (SSM first) "
        f"and {accuracy['A R']:.2f} (attention first); attention alone: {accuracy['A A']:.2f}.\n"
        f"   At {RECALL_CACHE_LENGTHS[-1] // 1024}K tokens the hybrid holds {cache['A A'] / cache['R A']:.1f}x less "
        f"cache than attention alone, the SSM {cache['A A'] / cache['R R']:.0f}x less.\n"
    )

    print("3. Cached decoding of a Griffin-style hybrid (RG-LRU state + local-attention ring buffer)")
    print(f"   max |logits(token by token) - logits(full forward)| = {decoding_matches_forward():.1e}")


def _bytes(count: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"
