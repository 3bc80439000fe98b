"""Helpers the fused-decoding tests share: decode token by token, nudge every weight, count kernel calls."""

import torch

from hybridlm.ops import decode_program

AS_LONG_AS_THE_TOKENS = object()


def decode_one_at_a_time(model, tokens: torch.Tensor, prompt: int = 3, max_len=AS_LONG_AS_THE_TOKENS) -> torch.Tensor:
    """Logits of every token after the prompt, decoded one at a time through a cache (b, N - prompt, V);
    the cache preallocated to `max_len` (by default the tokens' length; None: it grows)."""
    if max_len is AS_LONG_AS_THE_TOKENS:
        max_len = tokens.shape[1]
    with torch.inference_mode():
        cache = model.allocate_cache(tokens.shape[0], max_len=max_len)
        model(tokens[:, :prompt], cache=cache)
        return torch.cat([model(tokens[:, t : t + 1], cache=cache) for t in range(prompt, tokens.shape[1])], 1)


def perturbed(model):
    """`model` with every weight nudged (in place): zero-initialised biases and LoRA up-matrices would
    hide a missing term."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


def count_calls(monkeypatch, targets: dict) -> dict:
    """Wrap each `targets[label] = (module, name)` function so it counts its calls: {label: calls so far}.
    The kernels then run sub-layer by sub-layer: the whole-step program (ops/decode_program.py), which
    calls them inside one numba call, is turned off."""
    monkeypatch.setattr(decode_program, "decode_logits", lambda *args: None)
    counts = dict.fromkeys(targets, 0)

    def counting(label, fn):
        def wrapper(*args, **kwargs):
            counts[label] += 1
            return fn(*args, **kwargs)

        return wrapper

    for label, (module, name) in targets.items():
        monkeypatch.setattr(module, name, counting(label, getattr(module, name)))
    return counts
