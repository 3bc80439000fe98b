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
    was_training = model.training
    model.eval()
    total_loss, correct, answered = 0.0, 0, 0
    for index in range(n_batches):
        batch = data.batch(batch_size, seed, index, "test")
        inputs, targets = batch.inputs.to(device), batch.targets.to(device)
        logits = model(inputs).float()
        mask = targets != IGNORE
        total_loss += F.cross_entropy(logits[mask], targets[mask], reduction="sum").item()
        correct += (logits[mask].argmax(-1) == targets[mask]).sum().item()
        answered += int(mask.sum())
    model.train(was_training)
    loss = total_loss / max(answered, 1)
    return {"eval_loss": loss, "eval_accuracy": correct / max(answered, 1), "eval_ppl": math.exp(min(loss, 50))}


@torch.no_grad()
def loss_by_position(model, text, seq_len: int, batch_size: int = 8, max_batches: int | None = None, device="cpu"):
    """Mean next-token loss at each position 0..L-1 over non-overlapping test windows: (L,) tensor."""
    model.eval()
    totals, count = torch.zeros(seq_len, dtype=torch.float64), 0
    for index, batch in enumerate(text.sequential_batches(batch_size, seq_len, "test")):
        if max_batches is not None and index >= max_batches:
            break
        logits = model(batch.inputs.to(device)).float()
        losses = F.cross_entropy(logits.transpose(1, 2), batch.targets.to(device), reduction="none")  # (B, L)
        totals += losses.sum(0).double().cpu()
        count += losses.shape[0]
    if count == 0:
        raise ValueError(f"the test split is shorter than one window of {seq_len + 1} tokens")
    return totals / count


def perplexity_by_position(position_loss: torch.Tensor) -> list[dict]:
    """Bucket per-position losses by powers of two: [{'from': 1, 'to': 1, 'ppl': ...}, {2, 3}, {4, 7} ...]."""
    buckets, start = [], 0
    while start < len(position_loss):
        end = min(2 * start + 1, len(position_loss))  # positions [start, end) -> 1-based [start+1, end]
        buckets.append({"from": start + 1, "to": end, "ppl": math.exp(float(position_loss[start:end].mean()))})
        start = end
    return buckets
