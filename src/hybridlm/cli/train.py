"""`hybridlm train`: train on a synthetic task or local text; `--out DIR`, `--resume`; torchrun-ready.

hybridlm train "(RF AF)*1" --task mqar --task-set seq_len=64 --task-set n_pairs=8 --steps 600 --out runs/mqar
hybridlm train --config runs/mqar/recipe.yaml --out runs/mqar-again
torchrun --nproc_per_node 2 -m hybridlm.cli train jamba --size tiny --task mqar --steps 100

Every flag below the model comes from a `TrainConfig` field (recipe.py); a recipe file (`--config`)
gives the same settings, flags override it, and `--print-config` shows the resolved recipe.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from .. import settings
from ..config import ConfigError
from ..data.tokenizer import ByteTokenizer, load_tokenizer
from ..preset_table import refuse_paper
from .common import add_model_flags, progress_bar, task_settings

log = logging.getLogger(__name__)

HELP = "train on text or a synthetic task (mqar, passkey, copy, induction); --out DIR, --resume"


def add_arguments(parser) -> None:
    from ..recipe import TrainConfig

    parser.add_argument(
        "model",
        nargs="?",
        help="preset, pattern or checkpoint directory (its weights too: a fine-tune; optional with --resume)",
    )
    add_model_flags(parser, size_default=None)
    parser.add_argument("--config", help="a recipe file (YAML or JSON: model, size, set, train); flags override it")
    parser.add_argument("--print-config", action="store_true", help="print the resolved recipe and exit")
    parser.add_argument("--out", help="run directory: checkpoints (written atomically), metrics.jsonl, recipe.yaml")
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        metavar="auto",
        help="continue the run saved in --out exactly; --resume auto: continue it if there is one, else start",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the run (or checkpoint) hybridlm wrote in --out"
    )
    parser.add_argument("--tokenizer", default="byte", help="byte (default) or bpe:VOCAB, trained on --data")
    parser.add_argument(
        "--task-set", action="append", metavar="KEY=VALUE", help="task setting, e.g. --task-set seq_len=128"
    )
    settings.add_flags(parser, TrainConfig, skip=("task_settings",))


def run(args) -> int | None:
    from ..recipe import dump_recipe, resolved_recipe
    from ..run_dir import check
    from ..train import train

    model_config, config, resuming = resolve(args)
    if args.print_config:
        print(dump_recipe(resolved_recipe(model_config, config)), end="")
        return None
    if args.out:
        check(args.out, args.resume or False, args.overwrite)  # before a tokenizer is trained or a model built
    tokenizer = None
    if not resuming:
        tokenizer, model_config = _tokenizer(args.tokenizer, config, model_config)
    main_rank = os.environ.get("RANK", "0") == "0"
    logging.basicConfig(level=logging.INFO if main_rank else logging.WARNING, format="%(message)s")  # one set of lines
    with progress_bar(config.steps, "train") as bar:
        result = train(
            model_config,
            config,
            out=args.out,
            resume=args.resume or False,
            tokenizer=tokenizer,
            overwrite=args.overwrite,
            progress=bar,
        )
    if main_rank:
        final = result.final_eval
        saved_to = f"; saved to {args.out}" if args.out else ""
        print(
            f"step {result.step}: eval loss {final['eval_loss']:.4f}, accuracy {final['eval_accuracy']:.4f}{saved_to}"
        )
    return None


def resolve(args):
    """(model config, training config, resuming) from the recipe file, the saved run and the flags."""
    from ..checkpoint import load_config
    from ..recipe import TrainConfig, parse_overrides, read_recipe, replace_train_config, resolve_model, train_config
    from ..run_dir import STATE_FILE

    if args.resume not in (None, True, "auto"):
        raise ConfigError(f"--resume {args.resume!r}: give no value (continue) or auto")
    if args.resume and not args.out:
        raise ConfigError("--resume needs --out DIR holding a previous run")
    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: choose one")
    recipe = read_recipe(args.config) if args.config else {}
    changes = {**recipe.get("train", {}), **settings.given(args, TrainConfig, skip=("task_settings",))}
    target = args.model or recipe.get("model")
    if changes.get("text_path") and Path(changes["text_path"]).exists():  # a local file or folder, not hf:NAME:
        changes["text_path"] = str(Path(changes["text_path"]).absolute())  # resume and eval may run elsewhere
    if changes.get("init_from"):
        changes["init_from"] = str(Path(changes["init_from"]).absolute())
    if args.task_set:
        changes["task_settings"] = {
            **changes.get("task_settings", {}),
            **task_settings(args.task_set),
        }
    size = args.size or recipe.get("size", "small")
    refuse_paper(size, "train")
    overrides = {**recipe.get("set", {}), **parse_overrides(args.overrides)}
    saved = Path(args.out) / STATE_FILE if args.out else None
    if args.resume and saved.exists():
        previous = TrainConfig(**json.loads(saved.read_text())["train_config"])
        config = replace_train_config(previous, changes)  # train() refuses changes that break exactness
        model_config = resolve_model(target, size, overrides) if target else load_config(args.out)
        return model_config, config, True
    if target is None and args.resume:
        raise ConfigError(
            f"--resume: {args.out} holds no saved run ({STATE_FILE}); to start one there, give a model (preset, "
            "pattern or directory) without --resume"
        )
    if target is None and args.config:
        raise ConfigError(f"the recipe {args.config} names no model: add `model:` to it, or give one")
    if target is None:
        raise ConfigError("give a model (preset, pattern or directory), a --config recipe, or --resume with --out")
    if isinstance(target, str) and Path(target).is_dir() and changes.get("init_from") is None:
        changes["init_from"] = str(Path(target).absolute())  # its architecture and its weights: a fine-tune
    return resolve_model(target, size, overrides), train_config(changes), False


def _tokenizer(spec: str, config, model_config):
    """The run's tokenizer, and the model config with its vocabulary sized to it (BPE, shards); a
    fine-tune keeps its checkpoint's."""
    if config.init_from:
        if spec != "byte":
            raise ConfigError(f"--tokenizer {spec}: a fine-tune of {config.init_from} keeps its tokenizer")
        tokenizer = load_tokenizer(config.init_from)
    elif config.task != "text":
        if spec != "byte":
            raise ConfigError(f"--tokenizer {spec}: tokenizers apply to --task text")
        return ByteTokenizer(), model_config
    else:
        tokenizer = build_tokenizer(spec, config.text_path)
    if tokenizer.vocab_size != ByteTokenizer.vocab_size and model_config.vocab_size != tokenizer.vocab_size:
        log.info("vocab_size %d -> %d (the tokenizer's)", model_config.vocab_size, tokenizer.vocab_size)
        model_config = model_config.with_overrides({"vocab_size": tokenizer.vocab_size})
    return tokenizer, model_config


def build_tokenizer(spec: str, data):
    """byte, bpe:VOCAB (trained on `data`: a text path, or None for the default corpus), a folder with a
    tokenizer.json; a shard folder brings its own tokenizer."""
    from ..data.hf_datasets import HF_PREFIX, dataset_texts
    from ..data.shards import is_shard_dir
    from ..data.text import default_corpus_files, text_files
    from ..data.tokenizer import TOKENIZER_FILE, train_bpe

    if data is not None and is_shard_dir(data):
        if spec != "byte":
            raise ConfigError(f"--tokenizer {spec}: {data} holds token shards, which carry their tokenizer")
        return load_tokenizer(data)
    if spec == "byte":
        return ByteTokenizer()
    if spec.startswith("bpe:") and spec[4:].isdigit() and int(spec[4:]) > ByteTokenizer.vocab_size:
        if data is not None and str(data).startswith(HF_PREFIX):
            return train_bpe(dataset_texts(data), int(spec[4:]))
        files = text_files(data) if data is not None else default_corpus_files()
        return train_bpe((file.read_text(encoding="utf-8", errors="replace") for file in files), int(spec[4:]))
    if Path(spec, TOKENIZER_FILE).is_file():
        return load_tokenizer(spec)
    raise ConfigError(
        f"--tokenizer {spec!r}: use byte, bpe:VOCAB with VOCAB > 258 (e.g. bpe:4096), or a folder with {TOKENIZER_FILE}"
    )
