"""Held-out measurements: loss, accuracy over answered positions, perplexity, and perplexity by
position in the context (does more context keep helping? SSMs plateau, attention keeps improving).

Glossary: B batch, L sequence length, V vocabulary.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .data.synthetic import IGNORE


@torch.no_grad()
def evaluate(model, data, batch_size: int, n_batches: int, seed: int, device="cpu") -> dict:
    """Mean loss, accuracy and perplexity over the answered positions of `n_batches` test batches."""
    report = task_report(model, data, batch_size, n_batches, seed, device)
    return {key: report[key] for key in ("eval_loss", "eval_accuracy", "eval_ppl")}


def bucket_range(kind: str, value: int) -> tuple[int, int]:
    """The bucket [from, to] holding `value`: `depth` (percent) in fifths 0-19 .. 80-100, anything
    else (gaps, lengths) in powers of two 1, 2-3, 4-7, ..."""
    if kind == "depth":
        low = min(value // 20, 4) * 20
        return low, 100 if low == 80 else low + 19
    low = 1 << max(int(value), 1).bit_length() - 1
    return low, 2 * low - 1


@torch.no_grad()
def task_report(model, data, batch_size: int, n_batches: int, seed: int, device="cpu") -> dict:
    """`evaluate` plus exact match (every answer of a sequence right: the whole passkey or phone
    number) and accuracy per bucket of each of the task's bucket kinds (gap, depth)."""
    was_training = model.training
    model.eval()
    total_loss, correct, answered, exact, sequences = 0.0, 0, 0, 0, 0
    tallies: dict[str, dict[tuple[int, int], list[int]]] = {}  # kind -> range -> [answers, right, seqs, exact]
    for index in range(n_batches):
        batch = data.batch(batch_size, seed, index, "test")
        inputs, targets = batch.inputs.to(device), batch.targets.to(device)
        logits = model(inputs).float()
        mask = targets != IGNORE
        total_loss += F.cross_entropy(logits[mask], targets[mask], reduction="sum").item()
        right = (logits.argmax(-1) == targets) & mask
        correct += int(right.sum())
        answered += int(mask.sum())
        whole = (right | ~mask).all(1) & mask.any(1)  # (B,) every answer of the sequence right
        exact += int(whole.sum())
        sequences += int(mask.any(1).sum())
        for kind, values in batch.buckets.items():
            _tally(tallies.setdefault(kind, {}), kind, values.cpu(), mask.cpu(), right.cpu(), whole.cpu())
    model.train(was_training)
    loss = total_loss / max(answered, 1)
    return {
        "eval_loss": loss,
        "eval_accuracy": correct / max(answered, 1),
        "eval_exact_match": exact / max(sequences, 1),
        "eval_ppl": math.exp(min(loss, 50)),
        "buckets": {
            kind: [
                {
                    "from": low,
                    "to": high,
                    "answers": n,
                    "accuracy": hits / n,
                    **({"sequences": seqs, "exact_match": whole / seqs} if seqs else {}),
                }
                for (low, high), (n, hits, seqs, whole) in sorted(ranges.items())
            ]
            for kind, ranges in tallies.items()
        },
    }


def _tally(ranges: dict, kind: str, values, mask, right, whole) -> None:
    """Add one batch's answers to the per-bucket counts; a sequence whose answers all fall in one
    bucket also counts toward that bucket's exact match."""
    for row in range(values.shape[0]):
        asked = mask[row].nonzero().flatten()
        spans = {bucket_range(kind, int(values[row, p])) for p in asked}
        for position in asked:
            counts = ranges.setdefault(bucket_range(kind, int(values[row, position])), [0, 0, 0, 0])
            counts[0] += 1
            counts[1] += int(right[row, position])
        if len(spans) == 1:
            counts = ranges[spans.pop()]
            counts[2] += 1
            counts[3] += int(whole[row])


def depth_length_grid(model, task_cls, settings: dict, depths, lengths, length_field: str, **run) -> list[dict]:
    """Exact match and digit accuracy of a depth-controlled task at every (depth, length) cell
    (passkey: `seq_len`; phonebook: `n_entries`); `run` holds batch_size, n_batches, seed, device."""
    cells = []
    for length in lengths:
        for depth in depths:
            task = task_cls(**{**settings, length_field: length, "depth": depth})
            report = task_report(model, task, **run)
            cells.append(
                {
                    "depth": depth,
                    length_field: length,
                    "seq_len": task.seq_len,
                    "exact_match": report["eval_exact_match"],
                    "accuracy": report["eval_accuracy"],
                }
            )
    return cells
