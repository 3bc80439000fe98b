"""What lm-evaluation-harness asks of a model, computed with hybridlm alone (no lm_eval import):
log-likelihoods of continuations, batched with left padding, and generation until a stop string
on the hybrid cache.

    loglikelihood(cont | ctx) = sum_t log softmax(logits_t)[cont_t] over the continuation tokens
"""

from __future__ import annotations

import torch

from ..generate import left_pad, stream
from ..serve.text import TextStream


@torch.no_grad()
def score_continuations(model, pairs, batch_size: int, max_length: int) -> list[tuple[float, bool]]:
    """(sum of log-probabilities, greedy?) of each (context ids, continuation ids) pair.

    Inputs longer than `max_length` keep their last `max_length` tokens. Longest first, so a batch
    holds similar lengths; padding is on the left, masked, and positions start at 0 in every row.
    """
    model.eval()
    device = model.embed_tokens.weight.device
    results: list[tuple[float, bool] | None] = [None] * len(pairs)
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        rows = []
        for index in indices:
            context, continuation = pairs[index]
            if not 1 <= len(continuation) <= max_length:
                raise ValueError(f"a continuation of {len(continuation)} tokens (max_length {max_length})")
            rows.append(torch.tensor((list(context) + list(continuation))[-(max_length + 1) : -1]))
        ids, mask = left_pad(rows, device)
        logprobs = torch.log_softmax(model(ids, attention_mask=mask).float(), dim=-1)
        for row, index in enumerate(indices):
            target = torch.tensor(pairs[index][1], device=device)
            scored = logprobs[row, -len(target) :]
            total = scored.gather(-1, target.unsqueeze(-1)).sum()
            results[index] = (float(total), bool((scored.argmax(-1) == target).all()))
    return results


GENERATION_SETTINGS = {"until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p"}


def sampling_settings(settings: dict) -> dict:
    """A task's `generation_kwargs` as `generate_until`'s sampling arguments, read as transformers'
    `generate` reads them (its `GenerationConfig` defaults): greedy unless `do_sample`; then sampling at
    `temperature` 1, `top_k` 50 (0 turns it off) and `top_p` 1 unless they are given. A key it does not
    know (`num_beams`, ...) is refused rather than ignored."""
    unknown = sorted(set(settings) - GENERATION_SETTINGS)
    if unknown:
        raise ValueError(f"generation settings {unknown} are not supported (supported: {sorted(GENERATION_SETTINGS)})")
    if not settings.get("do_sample"):
        return {"temperature": 0.0}
    top_k, top_p = int(settings.get("top_k", 50)), float(settings.get("top_p", 1.0))
    return {
        "temperature": float(settings.get("temperature", 1.0)),
        "top_k": top_k or None,
        "top_p": None if top_p == 1.0 else top_p,
    }


def generate_until(
    model, tokenizer, contexts, until: list[str], max_tokens: int, temperature=0.0, top_k=None, top_p=None, seed=None
):
    """Continue each context (ids) until a stop string, end-of-text or `max_tokens`; returns the texts
    without the stop string. One batch, left-padded, decoded step by step with the hybrid cache."""
    stop_tokens = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
    texts = [TextStream(tokenizer, until) for _ in contexts]
    done = [False] * len(contexts)
    prompts = [torch.tensor(context) for context in contexts]
    steps = stream(model, prompts, max_tokens, temperature, top_k, top_p, seed=seed, stop_tokens=stop_tokens)
    for step in steps:
        for row, token in enumerate(step.tolist()):
            if done[row]:
                continue
            if token < 0 or token in stop_tokens:
                done[row] = True
                continue
            texts[row].push(token)
            done[row] = texts[row].stopped
        if all(done):
            break
    for text in texts:
        text.finish()
    return [text.text for text in texts]
