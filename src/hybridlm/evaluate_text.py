"""Perplexity on a whole token stream: every token scored once, in sliding windows with a stated
stride, reported as loss, perplexity and bits per byte, with perplexity by context position.

Windows are `seq_len` tokens long and start every `stride` tokens; the first window scores all of
its next-token targets, each later one only its last `stride` (those not scored yet), so a target
has at least `seq_len - stride` tokens of context except in the first window. Of T tokens, T - 1
are scored: the first token has no prediction. Bits per byte = loss_sum / (bytes · ln 2), with
`bytes` the UTF-8 size of the text behind the stream, so byte-level and BPE models compare.

By position: the scored targets are bucketed by their position in the window (1, 2-3, 4-7, ...),
each bucket with its token count and a 95 % confidence interval of its perplexity (normal
approximation of the mean token loss). With `stride < seq_len` the early positions are scored in
the first window only; the default `stride = seq_len` scores every position equally often.

Glossary: B windows per batch, L window length (seq_len), S stride, V vocabulary.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .config import ConfigError


@torch.no_grad()
def score_tokens(
    model, tokens: np.ndarray, seq_len: int, stride: int | None = None, batch_size: int = 8, device="cpu", progress=None
):
    """(per-target loss (T-1,), position of each target in its window (T-1,)) over the whole stream.
    `progress(done, total)` is called after each batch of windows."""
    stride = stride or seq_len
    if not 1 <= stride <= seq_len:
        raise ConfigError(f"stride {stride} must be in [1, seq_len={seq_len}]")
    total = len(tokens)
    if total < 2:
        raise ConfigError(f"{total} token(s): nothing to score")
    model.eval()
    losses = np.zeros(total - 1, dtype=np.float64)
    positions = np.zeros(total - 1, dtype=np.int64)
    starts = list(range(0, max(total - seq_len, 0) + 1, stride))
    if starts[-1] + seq_len < total:  # the tail: one more window, ending at the last token
        starts.append(total - seq_len)
    scored_to = 0  # targets [0, scored_to) are scored (target i predicts token i + 1)
    plans = []
    for start in starts:
        length = min(seq_len, total - 1 - start)
        first = max(scored_to - start, 0)  # the first target of this window not scored yet
        if length > first:
            plans.append((start, length, first))
            scored_to = start + length
    for index in range(0, len(plans), batch_size):
        group = plans[index : index + batch_size]
        width = max(length for _, length, _ in group)
        window = np.zeros((len(group), width + 1), dtype=np.int64)
        for row, (start, length, _) in enumerate(group):
            window[row, : length + 1] = tokens[start : start + length + 1]
        window = torch.from_numpy(window).to(device)
        logits = model(window[:, :-1]).float()  # (B, L, V)
        token_loss = F.cross_entropy(logits.transpose(1, 2), window[:, 1:], reduction="none").cpu().double()
        for row, (start, length, first) in enumerate(group):
            losses[start + first : start + length] = token_loss[row, first:length].numpy()
            positions[start + first : start + length] = np.arange(first, length)
        if progress is not None:
            progress(min(index + batch_size, len(plans)), len(plans))
    return losses, positions


def text_report(losses: np.ndarray, positions: np.ndarray, n_bytes: int, seq_len: int, stride: int) -> dict:
    """Loss, perplexity, bits per byte and the by-position buckets of `score_tokens`' output."""
    loss_sum = float(losses.sum())
    mean = loss_sum / len(losses)
    report = {
        "tokens": int(len(losses)),
        "bytes": int(n_bytes),
        "seq_len": seq_len,
        "stride": stride,
        "loss": mean,
        "ppl": math.exp(min(mean, 50)),
        "bits_per_byte": loss_sum / (n_bytes * math.log(2)) if n_bytes else None,
        "by_position": [],
    }
    start = 0
    while start < seq_len:
        end = min(2 * start + 1, seq_len)  # positions [start, end) -> 1-based [start + 1, end]
        bucket = losses[(positions >= start) & (positions < end)]
        if len(bucket):
            bucket_mean = float(bucket.mean())
            half = 1.96 * float(bucket.std(ddof=1)) / math.sqrt(len(bucket)) if len(bucket) > 1 else float("inf")
            report["by_position"].append(
                {
                    "from": start + 1,
                    "to": end,
                    "tokens": int(len(bucket)),
                    "ppl": math.exp(min(bucket_mean, 50)),
                    "ppl_low": math.exp(min(bucket_mean - half, 50)),
                    "ppl_high": math.exp(min(bucket_mean + half, 50)) if math.isfinite(half) else None,
                }
            )
        start = end
    return report
