"""Task-suitability metrics of the No-Free-Lunch view, measured on a model and a synthetic task:
k_T, the effective context length (seed section 3.11.3), and r_T, content- vs position-dependence
(Waleffe et al. 2024). Both read one answer per test sequence, at a known position t whose answer
copies the context token at a known source position s (the task's `sources`).

r_T, operationally. Two perturbations of the context before t, each keeping one route to the answer:
  * content perturbation C: every context token except the source itself is replaced by a random
    token (the current token at t is kept). Positions survive, so a positional rule ("the token
    `lag` back") still finds the answer; content cues around the source (a key) are gone.
  * position perturbation P: the source and the token before it (its cue, e.g. MQAR's key) swap
    places with another span of the context. Content survives, so a content rule ("the value
    after the key I am reading") still finds it; the offset from t is changed.
  Delta_C and Delta_P are the increases of the answer's cross-entropy over the clean sequence
  (floored at 0), and r_T = (Delta_C + delta) / (Delta_P + delta), delta = 0.01 nats. r_T >> 1:
  the model finds answers by content (MQAR); r_T << 1: by position (a fixed-offset copy).
Limits: r_T describes how a *trained model* solves the task (an untrained one gives ~1), it needs
answers that copy one token (tasks with `sources`), and the span moved by P is two tokens wide, so
tasks whose cue is longer (a passkey's NEEDLE key) are only partly content-tested.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..data.synthetic import IGNORE, NO_SOURCE
from .context_length import ContextCurve, default_contexts

SMOOTHING = 0.01  # delta, in nats: keeps r_T finite when neither perturbation changes the loss
SPAN = 2  # tokens moved by the position perturbation: the source and its cue before it


@dataclass
class Answers:
    inputs: torch.Tensor  # (B, L) test sequences
    positions: torch.Tensor  # (B,) the answer read at each sequence: its input position t
    sources: torch.Tensor  # (B,) the context position the answer copies
    targets: torch.Tensor  # (B,) the answer token


@dataclass
class Dependence:
    clean_loss: float
    content_loss: float  # after the content perturbation C
    position_loss: float  # after the position perturbation P
    content_increase: float  # Delta_C = max(0, content_loss - clean_loss)
    position_increase: float  # Delta_P
    ratio: float  # r_T = (Delta_C + delta) / (Delta_P + delta)
    answers: int

    def to_dict(self) -> dict:
        return asdict(self)


def sample_answers(data, n_batches: int, batch_size: int, seed: int) -> Answers:
    """One answer per test sequence, drawn uniformly among those whose source has room for the
    position perturbation (a free two-token span elsewhere before t)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for index in range(n_batches):
        batch = data.batch(batch_size, seed, index, "test")
        if batch.sources is None:
            raise ValueError(f"{type(data).__name__} marks no answer sources; r_T needs a task whose answers copy")
        for row in range(batch.inputs.shape[0]):
            t_all = ((batch.targets[row] != IGNORE) & (batch.sources[row] != NO_SOURCE)).nonzero().flatten()
            eligible = [int(t) for t in t_all if _free_spans(int(batch.sources[row, t]), int(t))]
            if not eligible:
                continue
            t = eligible[int(torch.randint(0, len(eligible), (1,), generator=g))]
            rows.append((batch.inputs[row], t, int(batch.sources[row, t]), int(batch.targets[row, t])))
    if not rows:
        raise ValueError("no answer of this task leaves room to move its source")
    return Answers(
        torch.stack([r[0] for r in rows]),
        torch.tensor([r[1] for r in rows]),
        torch.tensor([r[2] for r in rows]),
        torch.tensor([r[3] for r in rows]),
    )


def _free_spans(source: int, position: int) -> list[int]:
    """Ends q of the two-token spans [q-1, q] before `position` that do not overlap [source-1, source]."""
    if source < 1:
        return []
    return [q for q in range(1, position) if abs(q - source) >= SPAN]


def perturb_content(answers: Answers, vocab_size: int, g: torch.Generator) -> torch.Tensor:
    """Every token before t except the source replaced by a uniform random one."""
    inputs = answers.inputs.clone()
    noise = torch.randint(0, vocab_size, inputs.shape, generator=g)
    positions = torch.arange(inputs.shape[1])
    replace = (positions < answers.positions[:, None]) & (positions != answers.sources[:, None])
    return torch.where(replace, noise, inputs)


def perturb_position(answers: Answers, g: torch.Generator) -> torch.Tensor:
    """The span [s-1, s] swapped with a uniformly drawn free span [q-1, q] before t."""
    inputs = answers.inputs.clone()
    for row in range(inputs.shape[0]):
        s, t = int(answers.sources[row]), int(answers.positions[row])
        choices = _free_spans(s, t)
        q = choices[int(torch.randint(0, len(choices), (1,), generator=g))]
        moved, other = inputs[row, s - 1 : s + 1].clone(), inputs[row, q - 1 : q + 1].clone()
        inputs[row, s - 1 : s + 1], inputs[row, q - 1 : q + 1] = other, moved
    return inputs


@torch.no_grad()
def answer_loss(model, inputs: torch.Tensor, answers: Answers, batch_size: int = 64) -> float:
    """Mean cross-entropy of each sequence's one answer."""
    total = 0.0
    for start in range(0, inputs.shape[0], batch_size):
        chunk = slice(start, start + batch_size)
        logits = model(inputs[chunk]).float()
        rows = torch.arange(logits.shape[0])
        picked = logits[rows, answers.positions[chunk]]
        total += float(F.cross_entropy(picked, answers.targets[chunk], reduction="sum"))
    return total / inputs.shape[0]


def content_position_dependence(model, data, n_batches: int = 4, batch_size: int = 32, seed: int = 0) -> Dependence:
    """r_T of `data` for `model` (see the module docstring for the definition and its limits)."""
    was_training = model.training
    model.eval()
    try:
        answers = sample_answers(data, n_batches, batch_size, seed)
        g = torch.Generator().manual_seed(seed + 1)
        clean = answer_loss(model, answers.inputs, answers)
        content = answer_loss(model, perturb_content(answers, data.vocab_size, g), answers)
        position = answer_loss(model, perturb_position(answers, g), answers)
    finally:
        model.train(was_training)
    content_increase, position_increase = max(content - clean, 0.0), max(position - clean, 0.0)
    ratio = (content_increase + SMOOTHING) / (position_increase + SMOOTHING)
    return Dependence(clean, content, position, content_increase, position_increase, ratio, len(answers.targets))


@torch.no_grad()
def task_context_curve(
    model, data, n_batches: int = 4, batch_size: int = 32, seed: int = 0, eps: float = 0.01, contexts=None
) -> ContextCurve:
    """k_T of a task: the answer loss when the model sees only the last k tokens up to the answer's
    position t (inputs[t-k+1 .. t]; a sequence with fewer keeps all of them), for k = 1, 2, 4, ...
    up to the longest prefix; k_T = min{k : |loss(k) - loss(full)| <= eps} (context_length.py)."""
    was_training = model.training
    model.eval()
    try:
        answers = sample_answers(data, n_batches, batch_size, seed)
        longest = int(answers.positions.max()) + 1
        candidates = sorted({k for k in (contexts or default_contexts(longest)) if 1 <= k <= longest} | {longest})
        losses = [_truncated_loss(model, answers, k) for k in candidates]
    finally:
        model.train(was_training)
    effective = next(k for k, loss in zip(candidates, losses) if abs(loss - losses[-1]) <= eps)
    return ContextCurve(candidates, losses, eps, effective)


def _truncated_loss(model, answers: Answers, context: int) -> float:
    """Mean answer loss with `context` tokens ending at each answer's position (batched by window length)."""
    lengths = torch.clamp(answers.positions + 1, max=context)
    total = 0.0
    for length in lengths.unique().tolist():
        rows = (lengths == length).nonzero().flatten()
        ends = answers.positions[rows] + 1
        windows = torch.stack([answers.inputs[r, e - length : e] for r, e in zip(rows.tolist(), ends.tolist())])
        logits = model(windows, logits_to_keep=1)[:, -1].float()
        total += float(F.cross_entropy(logits, answers.targets[rows], reduction="sum"))
    return total / len(lengths)
