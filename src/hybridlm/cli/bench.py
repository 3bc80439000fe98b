"""`hybridlm bench`: speed and memory benchmarks, each implementation side by side in one process."""

from __future__ import annotations

import json
import os

from ..bench.machine import machine_info, machine_line
from ..bench.report import format_rows
from ..config import ConfigError

HELP = (
    "speed benchmarks: kernels vs references, models vs Hugging Face, training MFU, decoding vs context, "
    "the server under load"
)
SUITES = ("kernels", "models", "training", "context", "decode-profile", "allocator", "serve", "data", "compiled")
MODEL_SUITES = ("models", "training", "context", "decode-profile", "compiled")  # the suites that build presets


def add_arguments(parser) -> None:
    parser.add_argument("suites", nargs="*", metavar="SUITE", help=f"any of: {', '.join(SUITES)} (default: all)")
    parser.add_argument(
        "--quick", action="store_true", help="shorter sequences, fewer presets: a few minutes on a 2-core CPU"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch and numba threads (default 1: on a shared 2-core VM, 2 is slower)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per row instead of tables")
    parser.add_argument(
        "--presets",
        type=lambda text: tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip())),
        default=None,
        metavar="P[,P...]",
        help=f"the presets of the suites that build models ({', '.join(MODEL_SUITES)}; default: each suite's "
        "own); without a SUITE, those suites run",
    )
    parser.add_argument(
        "--size",
        default=None,
        help="their preset size: tiny or small (default: models and compiled --quick tiny, the others small)",
    )


def suite_rows(name: str, quick: bool, threads: int, presets: tuple | None = None, size: str | None = None) -> list:
    """Run one suite with its quick or full settings, on `presets` at `size` where given (the suites in
    MODEL_SUITES; the others ignore them; context's jamba-against-transformer KV rows run where jamba is
    among the presets); returns `bench.timing.Row`s."""
    from ..bench import allocator, compiled, context, data, decode_profile, kernels, models, serve, training

    chosen = {key: value for key, value in (("presets", presets), ("size", size)) if value is not None}

    def scope(**defaults) -> dict:  # the suite's own presets and size, the chosen ones in their place
        return {**defaults, **chosen}

    if name == "kernels":
        return kernels.kernel_rows(quick)
    if name == "models":
        if quick:
            return models.model_rows(
                **scope(presets=("jamba",)), prefill_length=1024, new_tokens=64, train_shape=(1, 128), repeats=3
            )
        return models.model_rows(**scope())
    if name == "training":
        if quick:
            return training.training_rows(
                **scope(presets=("transformer", "mamba2", "mamba")), batch=2, seq_len=128, repeats=1
            )
        return training.training_rows(**scope())
    if name == "context":
        with_jamba = presets is None or "jamba" in presets
        kv_rows = context.jamba_kv_rows(**({"size": size} if size else {})) if with_jamba else []
        if quick:
            return kv_rows + context.context_rows(**scope(), contexts=(1024, 4096), steps=8)
        return kv_rows + context.context_rows(**scope())
    if name == "decode-profile":
        if quick:
            return decode_profile.decode_profile_rows(**scope(presets=("mamba",)), steps=8)
        return decode_profile.decode_profile_rows(**scope(presets=("mamba", "jamba", "transformer")))
    if name == "compiled":  # torch.compile against eager: a training step and greedy decoding
        if quick:
            return compiled.compiled_rows(**scope(presets=("transformer",), size="tiny"), new_tokens=16)
        return compiled.compiled_rows(**scope())
    if name == "data":  # reading token shards vs tokenizing text into an int64 tensor, as before shards
        return data.data_rows(megabytes=4 if quick else 20)
    if name == "serve":  # 16 streaming clients vs one after another; time to first token with a cached prefix
        return serve.serve_rows(max_tokens=32 if quick else 64)
    return allocator.allocator_rows(batch=2 if quick else 4, seq_len=128 if quick else 256, threads=threads)


def chosen_suites(named: list, presets: tuple | None, size: str | None) -> tuple:
    """The suites to run: those named; else, with `--presets` or `--size`, the suites that build models;
    else every suite."""
    if named:
        return tuple(dict.fromkeys(named))
    return MODEL_SUITES if presets is not None or size is not None else SUITES


def check_scope(suites, presets: tuple | None, size: str | None, named: bool) -> None:
    """Refuse, before anything runs, `--presets`/`--size` that name no preset or size, that no chosen suite
    uses, or a preset `bench models` has no transformers twin for (`named`: the user chose the suites)."""
    from ..bench.models import HF_FAMILIES
    from ..preset_table import check_size, preset_description, refuse_paper

    if presets is None and size is None:
        return
    if not any(name in MODEL_SUITES for name in suites):
        raise ConfigError(f"--presets and --size apply to the suites {', '.join(MODEL_SUITES)}; none was chosen")
    if presets == ():
        raise ConfigError("--presets names no preset")
    for preset in presets or ():
        preset_description(preset)  # a one-line ConfigError listing the presets for an unknown one
    if size is not None:
        check_size(size)
        refuse_paper(size, "the suites")
    outside = [preset for preset in presets or () if preset not in HF_FAMILIES]
    if "models" in suites and outside:
        others = " ".join(name for name in suites if name != "models")
        advice = (
            "leave out the suite models, or that preset"
            if named
            else f"name the suites: `hybridlm bench {others} --presets {','.join(presets)}`"
        )
        raise ConfigError(
            f"`bench models` compares against transformers' twins of {', '.join(HF_FAMILIES)}; {outside[0]!r} has "
            f"none ({advice})"
        )


def run(args) -> None:
    import torch

    unknown = [name for name in args.suites if name not in SUITES]
    if unknown:
        raise ConfigError(f"unknown benchmark suite {unknown[0]!r}; choose from {', '.join(SUITES)}")
    cpus = os.cpu_count() or 1
    if not 1 <= args.threads <= cpus:
        raise ConfigError(f"--threads must be between 1 and this machine's {cpus} logical CPUs, not {args.threads}")
    suites = chosen_suites(args.suites, args.presets, args.size)
    check_scope(suites, args.presets, args.size, named=bool(args.suites))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(json.dumps({"machine": machine_info()}) if args.json else machine_line())
    for name in suites:
        rows = suite_rows(name, args.quick, args.threads, args.presets, args.size)
        if args.json:
            for row in rows:
                print(json.dumps(row.to_dict()))
        else:
            print(f"\n== {name} ({'quick' if args.quick else 'full'}, {args.threads} thread(s)) ==")
            print(format_rows(rows))
