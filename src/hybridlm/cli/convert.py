"""`hybridlm convert`: import a Hugging Face checkpoint directory, or export one (`--to-hf`).

The destination is checked before anything is read: never the source or a folder inside it, never a
folder hybridlm did not write, and an earlier conversion is replaced only with `--overwrite`.
"""

from __future__ import annotations

from pathlib import Path

from ..config import DTYPE_NAMES, ConfigError

HELP = "import a Hugging Face checkpoint (mamba, mamba2, jamba, bamba, zamba, zamba2, recurrent_gemma) or export one"


def add_arguments(parser) -> None:
    parser.add_argument("source", help="a transformers checkpoint directory (or, with --to-hf, a hybridlm one)")
    parser.add_argument("destination", help="a new directory to write (atomically)")
    parser.add_argument("--to-hf", action="store_true", help="export a hybridlm checkpoint for transformers")
    parser.add_argument(
        "--model-type", default=None, help="with --to-hf: the transformers family to write (default: inferred)"
    )
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default="float32", help="dtype of the written weights")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a destination an earlier hybridlm conversion wrote"
    )


def run(args) -> None:
    import torch

    from ..checkpoint import load, save
    from ..data.tokenizer import TOKENIZER_FILE, load_tokenizer
    from ..hf import FAMILIES, load_hf, save_hf

    check_destination(Path(args.source), Path(args.destination), args.overwrite)
    dtype = getattr(torch, args.dtype)
    tokenizer_file = Path(args.source) / TOKENIZER_FILE
    if args.to_hf:
        if args.model_type is not None and args.model_type not in FAMILIES:
            raise ConfigError(f"--model-type {args.model_type!r}: choose one of {', '.join(sorted(FAMILIES))}")
        model = load(args.source).to(dtype)
        extra = {TOKENIZER_FILE: tokenizer_file.read_bytes()} if tokenizer_file.exists() else None
        save_hf(model, args.destination, args.model_type, extra_files=extra, overwrite=args.overwrite)
        print(f"exported {args.source} (pattern {model.config.pattern}) -> {args.destination} for transformers")
        return
    if args.model_type is not None:
        raise ConfigError("--model-type applies to --to-hf only (an import reads model_type from config.json)")
    model = load_hf(args.source, dtype=dtype)
    tokenizer = load_tokenizer(args.source) if tokenizer_file.exists() else None
    save(model, args.destination, tokenizer=tokenizer, overwrite=args.overwrite)
    print(
        f"imported {args.source} -> {args.destination}: pattern {model.config.pattern}, "
        f"{model.num_parameters():,} parameters"
    )


def check_destination(source: Path, destination: Path, overwrite: bool) -> None:
    """Refuse, before any work, a destination that is the source, lies inside it or holds it, or may not
    be replaced."""
    from ..ownership import OwnershipError, check_replaceable, describe

    src, dst = source.resolve(), destination.resolve()
    if dst == src or src in dst.parents or dst in src.parents:
        raise OwnershipError(f"destination {destination} is, holds or lies inside the source: choose a new directory")
    # a conversion writes a checkpoint or an export: never over a run's metrics and optimizer state, or a sweep
    check_replaceable(destination, "destination", writing="checkpoint", by="convert")
    if not (destination.is_dir() and any(destination.iterdir())):
        return
    if not overwrite:
        raise OwnershipError(f"{destination} already holds {describe(destination)}; pass --overwrite to replace it")
