"""Whole models against Hugging Face transformers with identical weights: training, prefill, greedy decoding.

Our model is built from a preset, exported with `hybridlm.hf.save_hf` and loaded back by
transformers (`AutoModelForCausalLM`), so both sides hold the same weights; the first logits are
compared to prove it. transformers runs its CPU torch paths (no mamba_ssm / causal_conv1d here;
Mamba and Jamba train through mambapy's parallel scan when mambapy is installed, as `use_mambapy` asks).
Each pair of measurements is alternated in one process and the medians compared
(`timing.alternated_times`). Decoding is greedy for a fixed number of new tokens on both sides
(HF: `generate` with min_new_tokens = max_new_tokens, so neither stops early).
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from ..model import HybridLM
from ..presets import preset_config
from .hf_twin import transformers_twin
from .timing import Row, alternated_times

# presets transformers has a class for (Jamba, Mamba, RecurrentGemma, Mamba2, Zamba2)
HF_FAMILIES = ("jamba", "mamba", "griffin", "mamba2", "zamba2")


def paired_models(preset: str, size: str):
    """(ours, theirs, max |logit difference| on a probe) with the same weights, or None without transformers."""
    if importlib.util.find_spec("transformers") is None:
        return None
    torch.manual_seed(0)
    ours = HybridLM(preset_config(preset, size)).eval()
    theirs = transformers_twin(ours, use_mambapy=importlib.util.find_spec("mambapy") is not None).eval()
    probe = torch.randint(0, 256, (1, 32))
    with torch.no_grad():
        difference = (ours(probe) - theirs(probe).logits).abs().max().item()
    return ours, theirs, difference


def model_rows(
    presets=HF_FAMILIES,
    size: str = "tiny",
    prefill_length: int = 2048,
    new_tokens: int = 256,
    train_shape: tuple[int, int] = (2, 256),
    repeats: int = 5,
):
    """Training-step, prefill and greedy-decoding seconds of each preset against its transformers twin."""
    rows = []
    for preset in presets:
        pair = paired_models(preset, size)
        if pair is None:
            break
        ours, theirs, difference = pair
        label, notes = f"{preset} {size}", {"max_logit_diff": difference}
        rows.append(_training_row(label, ours, theirs, train_shape, repeats, notes))
        rows.append(_prefill_row(label, ours, theirs, prefill_length, repeats, notes))
        rows.append(_decode_row(label, ours, theirs, new_tokens, max(1, repeats // 2), notes))
    return rows


def _training_row(label, ours, theirs, shape, repeats, notes):
    """One forward + backward of the next-token loss (no optimizer step) on a (batch, length) batch."""
    tokens = torch.randint(0, 256, shape)

    def our_step():
        logits = ours(tokens[:, :-1])
        F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()

    def their_step():
        theirs(tokens, labels=tokens, use_cache=False).loss.backward()

    ours.train(), theirs.train()
    try:
        ours_s, theirs_s = alternated_times(our_step, their_step, repeats)
    finally:
        ours.eval(), theirs.eval()
        ours.zero_grad(set_to_none=True), theirs.zero_grad(set_to_none=True)
    batch, length = shape
    name = f"{label} training step {batch}x{length}"
    return Row("models", name, ours_s, theirs_s, "transformers", batch * length, notes)


def _prefill_row(label, ours, theirs, length, repeats, notes):
    tokens = torch.randint(0, 256, (1, length))
    with torch.no_grad():
        ours_s, theirs_s = alternated_times(lambda: ours(tokens), lambda: theirs(tokens, use_cache=False), repeats)
    return Row("models", f"{label} prefill 1x{length}", ours_s, theirs_s, "transformers", length, notes)


def _decode_row(label, ours, theirs, new_tokens, repeats, notes):
    prompt = torch.randint(0, 256, (1, 16))
    ours.generate(prompt, 4, temperature=0), _hf_greedy(theirs, prompt, 4)  # warm-up
    ours_s, theirs_s = alternated_times(
        lambda: ours.generate(prompt, new_tokens, temperature=0),
        lambda: _hf_greedy(theirs, prompt, new_tokens),
        repeats,
        warmup=0,
    )
    same = torch.equal(ours.generate(prompt, 32, temperature=0), _hf_greedy(theirs, prompt, 32))
    return Row(
        "models",
        f"{label} greedy decode {new_tokens} tokens",
        ours_s,
        theirs_s,
        "transformers generate",
        new_tokens,
        {**notes, "same_tokens_first_32": same},
    )


def _hf_greedy(model, prompt, new_tokens):
    return model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
