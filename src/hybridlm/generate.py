"""Sampling with the hybrid cache: greedy, temperature, top-k, top-p, stop tokens, ragged prompts.

Prompts of different lengths are left-padded and masked: padding never reaches an SSM state or
a KV cache and positions start at 0 in every row, so each row gives what it gives alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from .config import ConfigError


def generate(
    model,
    input_ids,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop_tokens=None,
):
    """Prompt + new tokens. `input_ids`: a (B, N) tensor -> a (B, N + T) tensor, rows that stopped
    early padded with their stop token; or a list of 1-D tensors -> a list of 1-D tensors, each
    prompt + its new tokens up to and including its stop token. Greedy when temperature == 0."""
    prompts = _as_rows(input_ids)
    new_tokens: list[list[int]] = [[] for _ in prompts]
    for step_tokens in stream(model, input_ids, max_new_tokens, temperature, top_k, top_p, seed, stop_tokens):
        for row, token in enumerate(step_tokens.tolist()):
            if token >= 0:
                new_tokens[row].append(token)
    rows = [torch.cat([prompt, prompt.new_tensor(tokens)]) for prompt, tokens in zip(prompts, new_tokens)]
    if isinstance(input_ids, torch.Tensor):
        width = max(len(row) for row in rows)
        return torch.stack([torch.cat([row, row[-1:].expand(width - len(row))]) for row in rows])
    return rows


@torch.inference_mode()  # lighter than no_grad: no version counters on the cache's tensors
def stream(
    model,
    input_ids,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop_tokens=None,
) -> Iterator[torch.Tensor]:
    """Yield a (B,) tensor of new tokens per step; -1 marks rows that have already stopped."""
    prompts = _as_rows(input_ids)
    if any(len(prompt) == 0 for prompt in prompts):
        raise ConfigError("every prompt needs at least one token")
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    device = model.embed_tokens.weight.device
    ids, attention_mask = left_pad(prompts, device)
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    stop = torch.tensor(sorted(set(stop_tokens or [])), dtype=torch.long, device=device)
    cache = model.allocate_cache(len(prompts), max_len=ids.shape[1] + max_new_tokens)
    was_training = model.training
    model.eval()
    try:
        logits = model(ids, cache=cache, attention_mask=attention_mask, logits_to_keep=1)[:, -1]
        finished = torch.zeros(len(prompts), dtype=torch.bool, device=device)
        for step in range(max_new_tokens):
            tokens = sample(logits, temperature, top_k, top_p, generator)
            tokens = tokens.masked_fill(finished, -1)
            yield tokens
            if len(stop):
                finished |= torch.isin(tokens, stop)
                if bool(finished.all()):
                    break
            if step == max_new_tokens - 1:
                break
            logits = model(tokens.clamp_min(0).unsqueeze(1), cache=cache)[:, -1]
    finally:
        model.train(was_training)


def check_sampling(max_new_tokens: int, temperature: float, top_k, top_p) -> None:
    """Refuse settings that cannot sample (they would fail deep inside torch.multinomial)."""
    if max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1], got {top_p}")


def sample(logits: torch.Tensor, temperature: float = 1.0, top_k=None, top_p=None, generator=None) -> torch.Tensor:
    """logits (B, V) -> tokens (B,). Top-k, then top-p (nucleus, Holtzman et al. 2020), then sample."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    if top_p is not None:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        mass_before = probs.cumsum(-1) - probs  # keep a token while the mass before it is < top_p
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, -torch.inf)
        logits = torch.full_like(logits, -torch.inf).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def left_pad(prompts: list[torch.Tensor], device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stack 1-D prompts left-padded; the mask is None when all have the same length."""
    width = max(len(prompt) for prompt in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long, device=device)
    mask = torch.zeros(len(prompts), width, dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = prompt.to(device)
        mask[row, width - len(prompt) :] = 1
    return ids, (None if bool(mask.all()) else mask)


def _as_rows(input_ids) -> list[torch.Tensor]:
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dim() != 2:
            raise ConfigError(f"input_ids must be (B, N) or a list of 1-D tensors, got shape {tuple(input_ids.shape)}")
        return list(input_ids.long())
    rows = [torch.as_tensor(row, dtype=torch.long) for row in input_ids]
    if not rows or any(row.dim() != 1 for row in rows):
        raise ConfigError("input_ids must be (B, N) or a non-empty list of 1-D tensors")
    return rows
