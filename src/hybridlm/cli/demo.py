"""`hybridlm demo`: the README's main job, a few-minute CPU run that shows the hybrid thesis
(attention recalls but its cache grows; an SSM's state is fixed but forgets; a hybrid gets both)."""

from __future__ import annotations

from .common import format_table

HELP = "a few-minute CPU run: cache cost vs context, recall of attention / SSM / hybrid, exact decoding"


def add_arguments(parser) -> None:
    parser.add_argument("--steps", type=int, default=400, help="training steps per recall model (default 400)")
    parser.add_argument("--seed", type=int, default=0)


def run(args) -> None:
    import torch

    from ..demo import COST_LENGTHS, RECALL_MODELS, cost_table, decoding_matches_forward, recall_experiment

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

    print(f"2. Recall: MQAR (64 tokens, 8 key-value pairs), 2 layers, d = 64, {args.steps} steps each\n")
    header = ["model", "pattern", "params", "cache at 64 tokens", "accuracy", "time"]
    results = recall_experiment(
        steps=args.steps,
        seed=args.seed,
        progress=lambda r: print(f"   {r.name}: accuracy {r.accuracy:.3f} ({r.seconds:.0f} s)", flush=True),
    )
    print()
    print(
        format_table(
            header,
            [
                [r.name, r.pattern, f"{r.params:,}", _bytes(r.state_bytes), f"{r.accuracy:.3f}", f"{r.seconds:.0f} s"]
                for r in results
            ],
        )
    )
    accuracy = {r.name: r.accuracy for r in results}
    names = list(RECALL_MODELS)
    print(
        f"\n   One attention layer lifts the SSM from {accuracy[names[1]]:.2f} to {accuracy[names[2]]:.2f} "
        f"(attention alone: {accuracy[names[0]]:.2f}).\n"
    )

    print("3. Cached decoding of a Griffin-style hybrid (RG-LRU state + local-attention ring buffer)")
    print(f"   max |logits(token by token) - logits(full forward)| = {decoding_matches_forward():.1e}")


def _bytes(count: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"
