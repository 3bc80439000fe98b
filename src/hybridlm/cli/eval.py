"""`hybridlm eval DIR`: perplexity (and perplexity by position) on text, or synthetic-task accuracy.

The task defaults to the one the checkpoint was trained on (trainer_state.json).
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
    parser.add_argument("--task", help="mqar | passkey | copy | induction | text (default: the training task)")
    parser.add_argument("--task-set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--data", help="text file or directory (task text)")
    parser.add_argument("--seq-len", type=int, help="text window (default: the training one)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=16, help="test batches (text: windows / batch size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")


def run(args) -> None:
    from ..checkpoint import load
    from ..data.synthetic import make_task
    from ..data.text import TextData
    from ..data.tokenizer import load_tokenizer
    from ..evaluate import evaluate, loss_by_position, perplexity_by_position

    model = load(args.directory)
    trained = _training_settings(args.directory)
    task = args.task or trained.get("task") or "mqar"
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
        result = {"task": task, **evaluate(model, data, args.batch_size, args.batches, args.seed)}
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
        print(f"{task}: accuracy {result['eval_accuracy']:.4f}, loss {result['eval_loss']:.4f}")


def _training_settings(directory) -> dict:
    from ..train import STATE_FILE

    state = Path(directory) / STATE_FILE
    return json.loads(state.read_text()).get("train_config", {}) if state.exists() else {}
