"""`hybridlm eval DIR`: perplexity (and perplexity by position) on text, or synthetic-task accuracy.

The task defaults to the one the checkpoint was trained on (trainer_state.json). Synthetic tasks
report exact match and accuracy per gap / depth bucket; `--grid` evaluates passkey or phonebook at
every depth x length, lengths beyond training included:

hybridlm eval runs/passkey --task passkey --grid --lengths 256,512,1024,2048
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config import ConfigError, parse_override
from .common import format_table
from .train import _typed

HELP = "perplexity (by position) on text, or synthetic-task accuracy, of a saved model"


def add_arguments(parser) -> None:
    parser.add_argument("directory", help="a checkpoint directory")
    parser.add_argument(
        "--task", help="mqar | passkey | phonebook | copy | induction | lag | text (default: the training task)"
    )
    parser.add_argument("--task-set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--data", help="text file or directory (task text)")
    parser.add_argument("--seq-len", type=int, help="text window (default: the training one)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=16, help="test batches (text: windows / batch size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--grid", action="store_true", help="passkey / phonebook: exact match at every depth x length")
    parser.add_argument(
        "--depths", default="0,0.25,0.5,0.75,1", help="grid depths in [0, 1] (default 0,0.25,0.5,0.75,1)"
    )
    parser.add_argument(
        "--lengths", help="grid lengths: passkey seq_len, phonebook n_entries (default: 1, 2, 4, 8 x the trained one)"
    )


def run(args) -> None:
    from ..checkpoint import load
    from ..data.synthetic import make_task
    from ..data.text import TextData
    from ..data.tokenizer import load_tokenizer
    from ..evaluate import loss_by_position, perplexity_by_position

    model = load(args.directory)
    trained = _training_settings(args.directory)
    task = args.task or trained.get("task") or "mqar"
    if args.grid and task not in GRID_LENGTH:
        raise ConfigError(f"--grid is for the depth-controlled tasks {' and '.join(GRID_LENGTH)}, not {task}")
    if task == "text":
        path = args.data or trained.get("text_path")
        if not path:
            raise ConfigError("task text needs --data PATH")
        tokenizer = load_tokenizer(args.directory)
        if tokenizer.vocab_size > model.config.vocab_size:
            raise ConfigError(
                f"the tokenizer has {tokenizer.vocab_size} ids, the model has vocab_size {model.config.vocab_size}"
            )
        text = TextData.from_path(path, tokenizer)
        seq_len = args.seq_len or trained.get("seq_len") or 256
        position_loss = loss_by_position(model, text, seq_len, args.batch_size, args.batches)
        result = {
            "task": "text",
            "ppl": float(position_loss.mean().exp()),
            "by_position": perplexity_by_position(position_loss),
        }
    else:
        settings = trained.get("task_settings", {}) if task == trained.get("task") else {}
        settings.update(dict(_typed(parse_override(item)) for item in args.task_set))
        data = make_task(task, **settings)
        if data.vocab_size > model.config.vocab_size:
            raise ConfigError(
                f"task {task} uses {data.vocab_size} token ids, the model has vocab_size {model.config.vocab_size}"
            )
        result = _synthetic(model, task, data, settings, args)
    if args.json:
        print(json.dumps(result, indent=2))
    elif task == "text":
        print(f"perplexity {result['ppl']:.3f} over {len(position_loss)}-token windows; by position:")
        print(
            format_table(
                ["positions", "ppl"], [[f"{b['from']}-{b['to']}", f"{b['ppl']:.3f}"] for b in result["by_position"]]
            )
        )
    else:
        print(_synthetic_text(result))


def _training_settings(directory) -> dict:
    from ..train import STATE_FILE

    state = Path(directory) / STATE_FILE
    return json.loads(state.read_text()).get("train_config", {}) if state.exists() else {}


GRID_LENGTH = {"passkey": "seq_len", "phonebook": "n_entries"}  # the length axis of each grid task


def _synthetic(model, task: str, data, settings: dict, args) -> dict:
    """Accuracy, exact match and buckets; with --grid, exact match at every (depth, length)."""
    import dataclasses

    from ..evaluate import depth_length_grid, task_report

    run = {"batch_size": args.batch_size, "n_batches": args.batches, "seed": args.seed}
    if not args.grid:
        return {"task": task, **task_report(model, data, **run)}
    field = GRID_LENGTH[task]
    trained = getattr(data, field)
    depths = _numbers("--depths", args.depths, float)
    lengths = _numbers("--lengths", args.lengths, int) if args.lengths else [trained * k for k in (1, 2, 4, 8)]
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
        rows = [
            [
                f"{b['from']}-{b['to']}",
                b["answers"],
                f"{b['accuracy']:.3f}",
                f"{b.get('exact_match', float('nan')):.3f}",
            ]
            for b in buckets
        ]
        lines.append(format_table([kind, "answers", "accuracy", "exact match"], rows))
    return "\n".join(lines)
