"""`hybridlm bench`: speed and memory benchmarks, each implementation side by side in one process."""

from __future__ import annotations

import json

from ..bench.machine import machine_info, machine_line
from ..bench.report import format_rows
from ..config import ConfigError

HELP = (
    "speed benchmarks: kernels vs references, models vs Hugging Face, training MFU, decoding vs context, "
    "the server under load"
)
SUITES = ("kernels", "models", "training", "context", "decode-profile", "allocator", "serve", "data", "compiled")


def add_arguments(parser) -> None:
    parser.add_argument("suites", nargs="*", metavar="SUITE", help=f"any of: {', '.join(SUITES)} (default: all)")
    parser.add_argument(
        "--quick", action="store_true", help="shorter sequences, fewer presets: a few minutes on a 2-core CPU"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch and numba threads (default 1: on a shared 2-core VM, 2 is slower)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per row instead of tables")


def suite_rows(name: str, quick: bool, threads: int) -> list:
    """Run one suite with its quick or full settings; returns `bench.timing.Row`s."""
    from ..bench import allocator, compiled, context, data, decode_profile, kernels, models, serve, training

    if name == "kernels":
        return kernels.kernel_rows(quick)
    if name == "models":
        if quick:
            return models.model_rows(("jamba",), prefill_length=1024, new_tokens=64, train_shape=(1, 128), repeats=3)
        return models.model_rows()
    if name == "training":
        if quick:
            return training.training_rows(("transformer", "mamba2", "mamba"), batch=2, seq_len=128, repeats=1)
        return training.training_rows()
    if name == "context":
        if quick:
            return context.jamba_kv_rows() + context.context_rows(contexts=(1024, 4096), steps=8)
        return context.jamba_kv_rows() + context.context_rows()
    if name == "decode-profile":
        if quick:
            return decode_profile.decode_profile_rows(("mamba",), steps=8)
        return decode_profile.decode_profile_rows(("mamba", "jamba", "transformer"))
    if name == "compiled":  # torch.compile against eager: a training step and greedy decoding
        if quick:
            return compiled.compiled_rows(("transformer",), size="tiny", new_tokens=16)
        return compiled.compiled_rows()
    if name == "data":  # reading token shards vs tokenizing text into an int64 tensor, as before shards
        return data.data_rows(megabytes=4 if quick else 20)
    if name == "serve":  # 16 streaming clients vs one after another; time to first token with a cached prefix
        return serve.serve_rows(max_tokens=32 if quick else 64)
    return allocator.allocator_rows(batch=2 if quick else 4, seq_len=128 if quick else 256, threads=threads)


def run(args) -> None:
    import torch

    unknown = [name for name in args.suites if name not in SUITES]
    if unknown:
        raise ConfigError(f"unknown benchmark suite {unknown[0]!r}; choose from {', '.join(SUITES)}")
    if args.threads < 1:
        raise ConfigError("--threads must be >= 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(json.dumps({"machine": machine_info()}) if args.json else machine_line())
    for name in args.suites or SUITES:
        rows = suite_rows(name, args.quick, args.threads)
        if args.json:
            for row in rows:
                print(json.dumps(row.to_dict()))
        else:
            print(f"\n== {name} ({'quick' if args.quick else 'full'}, {args.threads} thread(s)) ==")
            print(format_rows(rows))
