"""Cached (recurrent) forms give the logits of the full forward, whatever the chunking."""

import random

import pytest
import torch

from hybridlm import HybridLM, ModelConfig, presets
from hybridlm.layers.registry import mixer_chars

from .helpers import MIXER_CASES, tiny_config

TOLERANCE = 1e-4
LENGTH = 72  # > the windows used below, so ring buffers wrap


def _decode_variants(model: HybridLM, tokens: torch.Tensor, seed: int):
    with torch.no_grad():
        full = model(tokens)
        cache = model.allocate_cache(tokens.shape[0])
        stepwise = torch.cat([model(tokens[:, t : t + 1], cache=cache) for t in range(tokens.shape[1])], 1)
        cache = model.allocate_cache(tokens.shape[0], max_len=tokens.shape[1])
        rng, pieces, start = random.Random(seed), [], 0
        while start < tokens.shape[1]:
            size = rng.randint(1, 19)
            pieces.append(model(tokens[:, start : start + size], cache=cache))
            start += size
        chunked = torch.cat(pieces, 1)
    return full, stepwise, chunked


@pytest.mark.parametrize("name", presets())
def test_preset_decoding_equals_full_forward(name):
    model = HybridLM(ModelConfig.from_preset(name, "tiny")).eval()
    tokens = torch.randint(0, 258, (2, LENGTH))
    full, stepwise, chunked = _decode_variants(model, tokens, seed=len(name))
    assert (full - stepwise).abs().max() <= TOLERANCE
    assert (full - chunked).abs().max() <= TOLERANCE


@pytest.mark.parametrize("case", MIXER_CASES)
def test_mixer_decoding_equals_full_forward(case):
    model = HybridLM(tiny_config(**MIXER_CASES[case])).eval()
    tokens = torch.randint(0, 50, (2, LENGTH))
    full, stepwise, chunked = _decode_variants(model, tokens, seed=3)
    assert (full - stepwise).abs().max() <= TOLERANCE
    assert (full - chunked).abs().max() <= TOLERANCE


def random_pattern(rng: random.Random, n_mixers: int) -> str:
    mixers = sorted(mixer_chars() - {"S"})
    parts = []
    for _ in range(n_mixers):
        mixer = rng.choice(mixers + ["S"])
        parts.append(("S" + rng.choice(mixers)) if mixer == "S" else mixer)
        parts[-1] += rng.choice(["", "F", "E"])
    return " ".join(parts)


@pytest.mark.parametrize("seed", range(6))
def test_random_patterns_decode_exactly(seed):
    rng = random.Random(seed)
    config = tiny_config(
        pattern=random_pattern(rng, 5),
        attention={"window": rng.choice([3, 8, 17])},
        blend={"ssm": rng.choice("MDRH"), "attn": rng.choice("AL")},
        shared={"n_blocks": rng.choice([1, 2]), "lora_rank": rng.choice([0, 4])},
        moe={"n_experts": 4, "top_k": 2},
    )
    torch.manual_seed(seed)
    model = HybridLM(config).eval()
    with torch.no_grad():  # LoRA up-matrices start at zero; make them matter
        for name, parameter in model.named_parameters():
            if "adapter" in name:
                parameter.normal_(std=0.05)
    full, stepwise, chunked = _decode_variants(model, torch.randint(0, 50, (2, LENGTH)), seed)
    assert (full - stepwise).abs().max() <= TOLERANCE, config.pattern
    assert (full - chunked).abs().max() <= TOLERANCE, config.pattern


def test_windowed_cache_keeps_window_minus_one_entries():
    model = HybridLM(tiny_config(pattern="L", attention={"window": 6})).eval()
    cache = model.allocate_cache(1)
    with torch.no_grad():
        model(torch.randint(0, 50, (1, 40)), cache=cache)
        size_after_40 = cache.nbytes()
        for _ in range(30):
            model(torch.randint(0, 50, (1, 1)), cache=cache)
    assert cache.states[0].keys.shape[2] == 5
    assert cache.nbytes() == size_after_40


def test_ssm_cache_does_not_grow():
    model = HybridLM(tiny_config(pattern="M D R H")).eval()
    cache = model.allocate_cache(1)
    with torch.no_grad():
        model(torch.randint(0, 50, (1, 10)), cache=cache)
        after_10 = cache.nbytes()
        model(torch.randint(0, 50, (1, 9990)), cache=cache)
    assert cache.nbytes() == after_10
    assert int(cache.seen[0]) == 10_000


def test_full_attention_cache_grows_with_tokens():
    model = HybridLM(tiny_config(pattern="A")).eval()
    cache = model.allocate_cache(1, max_len=64)
    with torch.no_grad():
        model(torch.randint(0, 50, (1, 64)), cache=cache)
    state = cache.states[0]
    assert state.keys.shape == (1, 4, 64, 8)
    assert cache.nbytes() == 2 * 64 * 4 * 8 * 4 + 64 * 8


def test_cache_select_reorders_rows():
    model = HybridLM(tiny_config(pattern="A M L R")).eval()
    tokens = torch.randint(0, 50, (3, 20))
    with torch.no_grad():
        cache = model.allocate_cache(3)
        model(tokens[:, :15], cache=cache)
        cache.select([2, 0])
        continued = model(tokens[[2, 0], 15:], cache=cache)
        full = model(tokens[[2, 0]])[:, 15:]
    assert (continued - full).abs().max() <= TOLERANCE
    assert cache.batch_size == 2


@pytest.mark.parametrize("name", presets())
def test_left_padded_rows_equal_unpadded(name):
    model = HybridLM(ModelConfig.from_preset(name, "tiny")).eval()
    short, long = torch.randint(0, 258, (1, 9)), torch.randint(0, 258, (1, 30))
    padded = torch.cat([torch.zeros(1, 21, dtype=torch.long), short], 1)
    batch = torch.cat([padded, long])
    mask = torch.ones_like(batch)
    mask[0, :21] = 0
    with torch.no_grad():
        logits = model(batch, attention_mask=mask)
        assert (logits[0, 21:] - model(short)[0]).abs().max() <= TOLERANCE
        assert (logits[1] - model(long)[0]).abs().max() <= TOLERANCE


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: m(torch.tensor([1, 2])), r"integer token ids of shape \(batch, length\), got torch.int64 \(2,\)"),
        (lambda m: m(torch.ones(2, 3)), "integer token ids of shape"),
        (lambda m: m(torch.zeros(2, 0, dtype=torch.long)), r"holds no tokens: shape \(2, 0\)"),
        (
            lambda m: m(torch.ones(2, 3, dtype=torch.long), cache=m.allocate_cache(3)),
            "batch 2, the cache was allocated for 3",
        ),
        (
            lambda m: m(torch.ones(2, 8, dtype=torch.long), attention_mask=torch.ones(2, 5)),
            r"attention_mask has shape \(2, 5\), input_ids \(2, 8\)",
        ),
    ],
    ids=["1-d", "float", "empty", "cache-batch", "mask-shape"],
)
def test_a_wrong_call_is_named_before_any_mixer_runs(call, message):
    model = HybridLM(ModelConfig.from_preset("jamba", "tiny")).eval()
    with torch.no_grad(), pytest.raises(ValueError, match=message):
        call(model)
