"""`hybridlm train`: train on a synthetic task or local text; `--out DIR`, `--resume`; torchrun-ready.

hybridlm train "(RF AF)*1" --task mqar --task-set seq_len=64 --task-set n_pairs=8 --steps 600 --out runs/mqar
torchrun --nproc_per_node 2 -m hybridlm.cli train jamba --size tiny --task mqar --steps 100
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from ..config import ConfigError, parse_override
from .common import add_model_flags, resolve_config

HELP = "train on text or a synthetic task (mqar, passkey, copy, induction); --out DIR, --resume"


def add_arguments(parser) -> None:
    parser.add_argument("model", nargs="?", help="preset, pattern or checkpoint directory (optional with --resume)")
    add_model_flags(parser)
    parser.add_argument("--task", help="mqar | passkey | copy | induction | text (default: mqar)")
    parser.add_argument(
        "--task-set",
        action="append",
        metavar="KEY=VALUE",
        help="task setting, e.g. --task-set seq_len=128 --task-set n_pairs=16",
    )
    parser.add_argument("--data", help="text file or directory of .txt/.md files (task text)")
    parser.add_argument("--tokenizer", default="byte", help="byte (default) or bpe:VOCAB, trained on --data")
    parser.add_argument("--seq-len", type=int, help="sequence length for text (default 256)")
    parser.add_argument("--steps", type=int, help="total steps (default 200; with --resume: the saved plan)")
    parser.add_argument("--batch-size", type=int, help="default 32")
    parser.add_argument("--lr", type=float, help="peak learning rate (default 3e-3)")
    parser.add_argument("--warmup-steps", type=int, help="default 20")
    parser.add_argument("--weight-decay", type=float, help="default 0.1")
    parser.add_argument("--seed", type=int, help="default 0")
    parser.add_argument("--log-every", type=int, help="default 10")
    parser.add_argument("--eval-every", type=int, help="default 0: at the end only")
    parser.add_argument("--eval-batches", type=int, help="default 8")
    parser.add_argument("--save-every", type=int, help="default 0: at the end only")
    parser.add_argument("--out", help="checkpoint directory (written atomically)")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out exactly")
    parser.add_argument("--parallel", choices=["ddp", "fsdp"], help="strategy under torchrun (default ddp)")
    parser.add_argument(
        "--gradient-checkpointing", action="store_true", default=None, help="recompute sub-layers in backward"
    )


# command-line flag -> TrainConfig field
FLAGS = {
    "task": "task",
    "task_set": "task_settings",
    "data": "text_path",
    "seq_len": "seq_len",
    "steps": "steps",
    "batch_size": "batch_size",
    "lr": "lr",
    "warmup_steps": "warmup_steps",
    "weight_decay": "weight_decay",
    "seed": "seed",
    "log_every": "log_every",
    "eval_every": "eval_every",
    "eval_batches": "eval_batches",
    "save_every": "save_every",
    "parallel": "parallel",
    "gradient_checkpointing": "gradient_checkpointing",
}


def run(args) -> None:
    import os

    from ..checkpoint import load_config
    from ..train import STATE_FILE, TrainConfig, train

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    given = {field: getattr(args, flag) for flag, field in FLAGS.items() if getattr(args, flag) is not None}
    if "task_settings" in given:
        given["task_settings"] = dict(_typed(parse_override(item)) for item in given["task_settings"])
    if args.resume:
        saved = Path(args.out) / STATE_FILE if args.out else None
        if not (saved and saved.exists()):
            raise ConfigError("--resume needs --out DIR holding a previous run (trainer_state.json)")
        previous = TrainConfig(**json.loads(saved.read_text())["train_config"])
        config = dataclasses.replace(previous, **given)  # train() refuses changes that break exactness
        model_config = resolve_config(args.model, args.size, args.overrides) if args.model else load_config(args.out)
        tokenizer = None
    else:
        if args.model is None:
            raise ConfigError("give a model (preset, pattern or directory), or --resume with --out")
        config = TrainConfig(**given)
        model_config = resolve_config(args.model, args.size, args.overrides)
        tokenizer = _tokenizer(args.tokenizer, config, model_config)
    result = train(model_config, config, out=args.out, resume=args.resume, tokenizer=tokenizer)
    if os.environ.get("RANK", "0") == "0":
        final = result.final_eval
        saved_to = f"; saved to {args.out}" if args.out else ""
        print(
            f"step {result.step}: eval loss {final['eval_loss']:.4f}, accuracy {final['eval_accuracy']:.4f}{saved_to}"
        )


def _typed(item: tuple[str, str]) -> tuple[str, object]:
    key, value = item
    for cast in (int, float):
        try:
            return key, cast(value)
        except ValueError:
            pass
    return key, value


def _tokenizer(spec: str, config, model_config):
    from ..data.text import read_texts
    from ..data.tokenizer import ByteTokenizer, train_bpe

    if spec == "byte":
        return ByteTokenizer()
    if spec.startswith("bpe:") and spec[4:].isdigit():
        if config.task != "text" or not config.text_path:
            raise ConfigError("--tokenizer bpe:VOCAB needs --task text --data PATH to train on")
        vocab = int(spec[4:])
        if vocab > model_config.vocab_size:
            raise ConfigError(
                f"BPE vocabulary {vocab} exceeds the model's vocab_size {model_config.vocab_size}; "
                f"add --set vocab_size={vocab}"
            )
        return train_bpe(read_texts(config.text_path), vocab)
    raise ConfigError(f"--tokenizer {spec!r}: use byte or bpe:VOCAB (e.g. bpe:4096)")
