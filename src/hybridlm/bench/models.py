"""Whole models against Hugging Face transformers with identical weights: prefill and greedy decoding.

Our model is built from a preset, exported with `hybridlm.hf.save_hf` and loaded back by
transformers (`AutoModelForCausalLM`), so both sides hold the same weights; the first logits are
compared to prove it. transformers runs its CPU torch paths (no mamba_ssm / causal_conv1d here).
Decoding is greedy for a fixed number of new tokens on both sides (HF: `generate` with
min_new_tokens = max_new_tokens, so neither stops early).
"""

from __future__ import annotations

import importlib.util
import tempfile
import time

import torch

from ..model import HybridLM
from ..presets import preset_config
from .timing import Row, best_time

HF_FAMILIES = ("jamba", "mamba", "griffin")  # presets transformers has a class for (Jamba, Mamba, RecurrentGemma)


def paired_models(preset: str, size: str):
    """(ours, theirs, max |logit difference| on a probe) with the same weights, or None without transformers."""
    if importlib.util.find_spec("transformers") is None:
        return None
    import transformers

    from ..hf import save_hf

    torch.manual_seed(0)
    ours = HybridLM(preset_config(preset, size)).eval()
    directory = tempfile.mkdtemp(prefix="hybridlm-bench-")
    save_hf(ours, directory)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    probe = torch.randint(0, 256, (1, 32))
    with torch.no_grad():
        difference = (ours(probe) - theirs(probe).logits).abs().max().item()
    return ours, theirs, difference


def model_rows(presets=HF_FAMILIES, size: str = "tiny", prefill_length: int = 2048, new_tokens: int = 256):
    """Prefill tokens/s and greedy-decoding tokens/s of each preset against its transformers twin."""
    rows = []
    for preset in presets:
        pair = paired_models(preset, size)
        if pair is None:
            break
        rows += _pair_rows(preset, size, *pair, prefill_length, new_tokens)
    return rows


def _pair_rows(preset, size, ours, theirs, difference, prefill_length, new_tokens):
    notes = {"max_logit_diff": difference}
    tokens = torch.randint(0, 256, (1, prefill_length))
    with torch.no_grad():
        ours_s = best_time(lambda: ours(tokens), repeats=2)
        theirs_s = best_time(lambda: theirs(tokens, use_cache=False), repeats=1)
    prefill = Row(
        "models", f"{preset} {size} prefill 1x{prefill_length}", ours_s, theirs_s, "transformers", prefill_length, notes
    )
    prompt = torch.randint(0, 256, (1, 16))
    ours_s = _timed(lambda n: ours.generate(prompt, n, temperature=0), new_tokens)
    theirs_s = _timed(lambda n: _hf_greedy(theirs, prompt, n), new_tokens)
    same = torch.equal(ours.generate(prompt, 32, temperature=0), _hf_greedy(theirs, prompt, 32))
    decode = Row(
        "models",
        f"{preset} {size} greedy decode {new_tokens} tokens",
        ours_s,
        theirs_s,
        "transformers generate",
        new_tokens,
        {**notes, "same_tokens_first_32": same},
    )
    return [prefill, decode]


def _hf_greedy(model, prompt, new_tokens):
    return model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)


def _timed(generate, new_tokens: int) -> float:
    """Seconds of one `generate(new_tokens)` after a 4-token warm-up (256 tokens are long enough to time once)."""
    generate(4)
    start = time.perf_counter()
    generate(new_tokens)
    return time.perf_counter() - start
