"""`hybridlm eval DIR`: perplexity (and perplexity by position) on text, or synthetic-task accuracy.

The task defaults to the one the checkpoint was trained on (trainer_state.json). Synthetic tasks
report exact match and accuracy per gap / depth bucket; `--grid` evaluates passkey or phonebook at
every depth x length, lengths beyond training included:

hybridlm eval runs/passkey --task passkey --grid --lengths 256,512,1024,2048
"""

from __future__ import annotations

import json

from ..config import ConfigError
from ..recipe import EvalConfig
from ..settings import add_flags, build, given
from .common import format_table, progress_bar, saved_task, training_settings

HELP = "perplexity (by position) on text, or synthetic-task accuracy, of a saved model"


def add_arguments(parser) -> None:
    parser.add_argument("directory", help="a checkpoint directory")
    parser.add_argument("--task-set", action="append", default=[], metavar="KEY=VALUE", help="task setting")
    parser.add_argument("--json", action="store_true")
    add_flags(parser, EvalConfig)


def run(args) -> None:
    from ..checkpoint import load

    config = build(EvalConfig, given(args, EvalConfig))
    model = load(args.directory)
    trained = training_settings(args.directory)
    task = config.task or trained.get("task") or "mqar"
    if config.grid and task not in GRID_LENGTH:
        raise ConfigError(f"--grid is for the depth-controlled tasks {' and '.join(GRID_LENGTH)}, not {task}")
    if task == "text":
        result = _text(model, args, config, trained)
    else:
        data, settings = saved_task(model, args.directory, task, args.task_set)
        result = _synthetic(model, task, data, settings, config)
    if args.json:
        print(json.dumps(result, indent=2))
    elif task == "text":
        print(_text_summary(result))
    else:
        print(_synthetic_text(result))


def _text(model, args, config, trained: dict) -> dict:
    """Every token of --data scored once (or, without --data, the training run's validation split)."""

    from ..data.text import TextData, token_stream
    from ..data.tokenizer import load_tokenizer
    from ..evaluate_text import score_tokens, text_report

    tokenizer = load_tokenizer(args.directory)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ConfigError(
            f"the tokenizer has {tokenizer.vocab_size} ids, the model has vocab_size {model.config.vocab_size}"
        )
    if config.data:
        tokens, n_bytes = token_stream(config.data, tokenizer)
        source = config.data
    else:  # the held-out part of what the run trained on (the default corpus when it named none)
        tokens = TextData.from_path(trained.get("text_path"), tokenizer).validation
        n_bytes = len(tokenizer.decode([int(t) for t in tokens]).encode("utf-8"))
        source = f"the validation split of {trained.get('text_path') or 'the default corpus'}"
    seq_len = config.seq_len or trained.get("seq_len") or 256
    stride = config.stride or seq_len
    with progress_bar(len(tokens) // stride + 1, "eval", "window") as bar:
        losses, positions = score_tokens(model, tokens, seq_len, stride, config.batch_size, progress=bar)
    report = text_report(losses, positions, n_bytes, seq_len, stride)
    return {"task": "text", "source": str(source), **report}


def _text_summary(result: dict) -> str:
    bpb = f", {result['bits_per_byte']:.4f} bits/byte" if result["bits_per_byte"] is not None else ""
    head = (
        f"{result['source']}: {result['tokens']:,} tokens scored ({result['bytes']:,} bytes), "
        f"loss {result['loss']:.4f}, perplexity {result['ppl']:.3f}{bpb}; "
        f"windows of {result['seq_len']}, stride {result['stride']}\n"
        "perplexity by position in the window (95 % interval):"
    )
    rows = [
        [
            f"{b['from']}-{b['to']}",
            b["tokens"],
            f"{b['ppl']:.3f}",
            f"{b['ppl_low']:.3f}-{b['ppl_high'] or float('inf'):.3f}",
        ]
        for b in result["by_position"]
    ]
    return head + "\n" + format_table(["positions", "tokens", "ppl", "95 % interval"], rows)


GRID_LENGTH = {"passkey": "seq_len", "phonebook": "n_entries"}  # the length axis of each grid task


def _synthetic(model, task: str, data, settings: dict, config) -> dict:
    """Accuracy, exact match and buckets; with --grid, exact match at every (depth, length)."""
    import dataclasses

    from ..evaluate import depth_length_grid, task_report

    run = {"batch_size": config.batch_size, "n_batches": config.batches, "seed": config.seed}
    if not config.grid:
        return {"task": task, **task_report(model, data, **run)}
    field = GRID_LENGTH[task]
    trained = getattr(data, field)
    depths = _numbers("--depths", config.depths, float)
    lengths = _numbers("--lengths", config.lengths, int) if config.lengths else [trained * k for k in (1, 2, 4, 8)]
    base = {k: v for k, v in dataclasses.asdict(data).items() if k not in (field, "depth")}
    for value in depths:
        if not 0 <= value <= 1:
            raise ConfigError(f"--depths: {value} is out of range; allowed 0..1")
    grid = depth_length_grid(model, type(data), base, depths, lengths, field, **run)
    return {"task": task, "length_field": field, "trained_length": trained, "grid": grid}


def _numbers(flag: str, text: str, cast) -> list:
    try:
        return [cast(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated numbers, got {text!r}") from None


def _synthetic_text(result: dict) -> str:
    task = result["task"]
    if "grid" in result:
        field, grid = result["length_field"], result["grid"]
        lengths = sorted({cell[field] for cell in grid})
        depths = sorted({cell["depth"] for cell in grid})
        exact = {(cell["depth"], cell[field]): cell["exact_match"] for cell in grid}
        header = ["depth"] + [f"{field} {n}" + (" (trained)" if n == result["trained_length"] else "") for n in lengths]
        rows = [[f"{d:g}"] + [f"{exact[d, n]:.3f}" for n in lengths] for d in depths]
        return f"{task}: exact match by needle depth x length\n" + format_table(header, rows)
    lines = [
        f"{task}: accuracy {result['eval_accuracy']:.4f}, exact match {result['eval_exact_match']:.4f}, "
        f"loss {result['eval_loss']:.4f}"
    ]
    for kind, buckets in result["buckets"].items():
        # exact match is per sequence: a bucket has one only when each sequence falls in one bucket (a
        # needle's depth); MQAR's answers spread one sequence over many gaps
        whole = any("exact_match" in b for b in buckets)
        rows = [
            [
                f"{b['from']}-{b['to']}",
                b["answers"],
                f"{b['accuracy']:.3f}",
                *([f"{b['exact_match']:.3f}" if "exact_match" in b else "-"] if whole else []),
            ]
            for b in buckets
        ]
        lines.append(format_table([kind, "answers", "accuracy", *(["exact match"] if whole else [])], rows))
    return "\n".join(lines)
