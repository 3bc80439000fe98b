"""Effective context length k_T of a task for a model: the smallest context whose loss is within
eps of the full-context loss, measured by truncating the context.

Each sequence of a task ends with `answer_length` scored tokens. With context k the model sees
only the k tokens before the answer (then the answer itself, teacher-forced), so the loss at k
is the mean cross-entropy of the answer tokens given that window; the full context is every
token before the answer. k_T = min{k : |loss(k) - loss(full)| <= eps} (for a trained model a
shorter context only raises the loss; an untrained one can lower it by chance, hence the |.|).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..model import HybridLM


@dataclass
class ContextCurve:
    contexts: list[int]  # candidate context lengths k, increasing, the last one the full context
    losses: list[float]  # answer loss at each k
    eps: float
    effective_length: int  # k_T

    @property
    def full_loss(self) -> float:
        return self.losses[-1]

    def to_dict(self) -> dict:
        return {
            "contexts": self.contexts,
            "losses": self.losses,
            "eps": self.eps,
            "effective_length": self.effective_length,
        }


def answer_loss(model: HybridLM, sequences: torch.Tensor, answer_length: int, context: int) -> float:
    """Mean cross-entropy of the last `answer_length` tokens of sequences (B, T) given `context` tokens before them."""
    total = sequences.shape[1]
    start = total - answer_length - context
    window = sequences[:, start : total - 1]  # context + all answer tokens but the last (teacher forcing)
    with torch.no_grad():
        logits = model(window, logits_to_keep=answer_length)
    targets = sequences[:, total - answer_length :]
    return float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1)))


def default_contexts(full: int) -> list[int]:
    """1, 2, 4, ... below the full context, then the full context."""
    contexts, k = [], 1
    while k < full:
        contexts.append(k)
        k *= 2
    return contexts + [full]


def effective_context_length(
    model: HybridLM,
    sequences: torch.Tensor,
    answer_length: int = 1,
    eps: float = 0.01,
    contexts: list[int] | None = None,
) -> ContextCurve:
    """k_T for sequences (B, T) whose last `answer_length` tokens are scored; contexts default to powers of 2."""
    if sequences.dim() != 2:
        raise ValueError(f"sequences must be (B, T), got {tuple(sequences.shape)}")
    full = sequences.shape[1] - answer_length
    if answer_length < 1 or full < 1:
        raise ValueError("need answer_length >= 1 and at least one context token before the answer")
    candidates = sorted({k for k in (contexts or default_contexts(full)) if 1 <= k <= full} | {full})
    was_training = model.training
    model.eval()
    try:
        losses = [answer_loss(model, sequences, answer_length, k) for k in candidates]
    finally:
        model.train(was_training)
    effective = next(k for k, loss in zip(candidates, losses) if abs(loss - losses[-1]) <= eps)
    return ContextCurve(candidates, losses, eps, effective)
