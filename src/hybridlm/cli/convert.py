"""`hybridlm convert`: import a Hugging Face checkpoint directory, or export one (`--to-hf`)."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..config import DTYPE_NAMES

HELP = "import a Hugging Face checkpoint (mamba, mamba2, jamba, bamba, zamba, zamba2, recurrent_gemma) or export one"


def add_arguments(parser) -> None:
    parser.add_argument("source", help="a transformers checkpoint directory (or, with --to-hf, a hybridlm one)")
    parser.add_argument("destination", help="the directory to write (replaced atomically)")
    parser.add_argument("--to-hf", action="store_true", help="export a hybridlm checkpoint for transformers")
    parser.add_argument(
        "--model-type", default=None, help="with --to-hf: the transformers family to write (default: inferred)"
    )
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default="float32", help="dtype of the written weights")


def run(args) -> None:
    import torch

    from ..checkpoint import load, save
    from ..config import ConfigError
    from ..data.tokenizer import TOKENIZER_FILE, load_tokenizer
    from ..hf import FAMILIES, load_hf, save_hf

    dtype = getattr(torch, args.dtype)
    if args.to_hf:
        if args.model_type is not None and args.model_type not in FAMILIES:
            raise ConfigError(f"--model-type {args.model_type!r}: choose one of {', '.join(sorted(FAMILIES))}")
        model = load(args.source).to(dtype)
        save_hf(model, args.destination, args.model_type)
        if (Path(args.source) / TOKENIZER_FILE).exists():
            shutil.copyfile(Path(args.source) / TOKENIZER_FILE, Path(args.destination) / TOKENIZER_FILE)
        print(f"exported {args.source} (pattern {model.config.pattern}) -> {args.destination} for transformers")
        return
    if args.model_type is not None:
        raise ConfigError("--model-type applies to --to-hf only (an import reads model_type from config.json)")
    model = load_hf(args.source, dtype=dtype)
    has_tokenizer = (Path(args.source) / TOKENIZER_FILE).exists()
    save(model, args.destination, tokenizer=load_tokenizer(args.source) if has_tokenizer else None)
    print(
        f"imported {args.source} -> {args.destination}: pattern {model.config.pattern}, "
        f"{model.num_parameters():,} parameters"
    )
