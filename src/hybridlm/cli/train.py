"""`hybridlm train`: train on a synthetic task or local text; `--out DIR`, `--resume`; torchrun-ready.

hybridlm train "(RF AF)*1" --task mqar --task-set seq_len=64 --task-set n_pairs=8 --steps 600 --out runs/mqar
torchrun --nproc_per_node 2 -m hybridlm.cli train jamba --size tiny --task mqar --steps 100
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..config import ConfigError, parse_override
from .common import add_model_flags, resolve_config

HELP = "train on text or a synthetic task (mqar, passkey, copy, induction); --out DIR, --resume"


def add_arguments(parser) -> None:
    parser.add_argument("model", nargs="?", help="preset, pattern or checkpoint directory (optional with --resume)")
    add_model_flags(parser)
    parser.add_argument("--task", default="mqar", help="mqar | passkey | copy | induction | text (default: mqar)")
    parser.add_argument(
        "--task-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="task setting, e.g. --task-set seq_len=128 --task-set n_pairs=16",
    )
    parser.add_argument("--data", help="text file or directory of .txt/.md files (task text)")
    parser.add_argument("--tokenizer", default="byte", help="byte (default) or bpe:VOCAB, trained on --data")
    parser.add_argument("--seq-len", type=int, default=256, help="sequence length for text (default 256)")
    parser.add_argument("--steps", type=int, help="total steps (default 200; with --resume: the saved plan)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--eval-every", type=int, default=0)
    parser.add_argument("--eval-batches", type=int, default=8)
    parser.add_argument("--save-every", type=int, default=0)
    parser.add_argument("--out", help="checkpoint directory (written atomically)")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out exactly")
    parser.add_argument("--parallel", choices=["ddp", "fsdp"], default="ddp", help="strategy under torchrun")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="recompute sub-layers in backward")


def run(args) -> None:
    from ..train import STATE_FILE, TrainConfig, train

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    saved = Path(args.out) / STATE_FILE if args.out else None
    if args.resume and not (saved and saved.exists()):
        raise ConfigError("--resume needs --out DIR holding a previous run (trainer_state.json)")
    if args.model is None and not args.resume:
        raise ConfigError("give a model (preset, pattern or directory), or --resume with --out")
    target = args.model if args.model is not None else args.out
    model_config = resolve_config(target, args.size, args.overrides)
    if args.resume and args.model is None:
        previous = json.loads(saved.read_text())["train_config"]
        config = TrainConfig(**{**previous, "steps": args.steps or previous["steps"]})
    else:
        config = TrainConfig(
            task=args.task,
            task_settings=dict(_typed(parse_override(item)) for item in args.task_set),
            text_path=args.data,
            seq_len=args.seq_len,
            steps=args.steps or 200,
            batch_size=args.batch_size,
            lr=args.lr,
            warmup_steps=args.warmup_steps,
            weight_decay=args.weight_decay,
            seed=args.seed,
            log_every=args.log_every,
            eval_every=args.eval_every,
            eval_batches=args.eval_batches,
            save_every=args.save_every,
            parallel=args.parallel,
            gradient_checkpointing=args.gradient_checkpointing,
        )
    tokenizer = _tokenizer(args.tokenizer, config, model_config) if not args.resume else None
    result = train(model_config, config, out=args.out, resume=args.resume, tokenizer=tokenizer)
    final = result.final_eval
    print(
        f"step {result.step}: eval loss {final['eval_loss']:.4f}, accuracy {final['eval_accuracy']:.4f}"
        + (f"; saved to {args.out}" if args.out else "")
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
