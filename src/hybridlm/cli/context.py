"""`hybridlm context DIR`: the No-Free-Lunch task metrics of a saved model on a synthetic task:
k_T (effective context length: the smallest context reaching the full-context loss within eps)
and r_T (content- vs position-dependence; docs/task-metrics.md has the definition and its limits).

hybridlm context runs/mqar --task mqar --eps 0.05
"""

from __future__ import annotations

import json

from ..config import ConfigError
from .common import format_table, saved_task, training_settings

HELP = "k_T (effective context length) and r_T (content vs position dependence) of a saved model on a task"


def add_arguments(parser) -> None:
    parser.add_argument("directory", help="a checkpoint directory")
    parser.add_argument(
        "--task", help="mqar | passkey | phonebook | copy | induction | lag (default: the training task)"
    )
    parser.add_argument("--task-set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--eps", type=float, default=0.01, help="k_T tolerance on the answer loss, nats (default 0.01)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=4, help="test batches; one answer is read per sequence")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")


def run(args) -> None:
    from ..analysis.content_position import content_position_dependence, task_context_curve
    from ..checkpoint import load

    if args.eps < 0 or args.batches < 1 or args.batch_size < 1:
        raise ConfigError("--eps must be >= 0, --batches and --batch-size >= 1")
    model = load(args.directory)
    trained = training_settings(args.directory)
    task = args.task or trained.get("task") or "mqar"
    if task == "text":
        raise ConfigError(
            f"k_T and r_T are measured on the synthetic tasks (--task mqar, ...); for this text run, "
            f"`hybridlm eval {args.directory}` gives its perplexity by position"
        )
    data, _ = saved_task(model, args.directory, task, args.task_set)
    sample = {"n_batches": args.batches, "batch_size": args.batch_size, "seed": args.seed}
    curve = task_context_curve(model, data, eps=args.eps, **sample)
    dependence = content_position_dependence(model, data, **sample)
    result = {"task": task, "k_T": curve.effective_length, "context": curve.to_dict(), "r_T": dependence.to_dict()}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{task}: k_T = {curve.effective_length} (answer loss within {args.eps} of the full context's)")
    print(
        format_table(["context", "answer loss"], [[k, f"{loss:.4f}"] for k, loss in zip(curve.contexts, curve.losses)])
    )
    d = dependence
    side = "content" if d.ratio > 1 else "position"
    print(
        f"\nr_T = {d.ratio:.3g} ({side}-dominant; {d.answers} answers): answer loss {d.clean_loss:.4f} clean, "
        f"{d.content_loss:.4f} with the content replaced (+{d.content_increase:.4f}), "
        f"{d.position_loss:.4f} with the source moved (+{d.position_increase:.4f})"
    )
