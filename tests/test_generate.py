"""Generation: ragged batches, sampling controls, streaming."""

import pytest
import torch

from hybridlm import HybridLM, ModelConfig, presets
from hybridlm.generate import sample


@pytest.mark.parametrize("name", presets())
def test_batched_ragged_greedy_equals_one_by_one(name):
    model = HybridLM(ModelConfig.from_preset(name, "tiny")).eval()
    prompts = [torch.randint(0, 258, (n,)) for n in (5, 23, 1)]
    batched = model.generate(prompts, 24, temperature=0)
    for prompt, row in zip(prompts, batched):
        alone = model.generate(prompt.unsqueeze(0), 24, temperature=0)[0]
        assert torch.equal(row, alone)
        assert torch.equal(row[: len(prompt)], prompt)


def test_greedy_generation_equals_argmax_of_full_forward():
    model = HybridLM(ModelConfig.from_preset("jamba", "tiny")).eval()
    prompt = torch.randint(0, 258, (1, 6))
    generated = model.generate(prompt, 12, temperature=0)
    with torch.no_grad():
        logits = model(generated)
    assert torch.equal(logits[0, 5:-1].argmax(-1), generated[0, 6:])


def test_sampling_is_reproducible_under_seed():
    model = HybridLM(ModelConfig.from_preset("griffin", "tiny")).eval()
    prompt = torch.randint(0, 258, (2, 4))
    first = model.generate(prompt, 16, temperature=1.0, seed=7)
    assert torch.equal(first, model.generate(prompt, 16, temperature=1.0, seed=7))
    assert not torch.equal(first, model.generate(prompt, 16, temperature=1.0, seed=8))


def test_top_k_never_emits_excluded_tokens():
    logits = torch.randn(64, 30)
    allowed = logits.topk(3, dim=-1).indices
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        tokens = sample(logits, 1.5, top_k=3, generator=generator)
        assert (allowed == tokens.unsqueeze(1)).any(1).all()


def test_top_p_never_emits_excluded_tokens():
    logits = torch.tensor([[3.0, 2.0, 1.0, -1.0, -2.0]]).repeat(200, 1)
    probs = logits.softmax(-1)[0]  # 0.66, 0.24, 0.09, ...: top_p = 0.8 keeps the first two
    assert probs[0] < 0.8 <= probs[0] + probs[1]
    tokens = sample(logits, 1.0, top_p=0.8, generator=torch.Generator().manual_seed(1))
    assert set(tokens.tolist()) == {0, 1}


def test_stop_tokens_end_a_row():
    model = HybridLM(ModelConfig.from_preset("mamba", "tiny")).eval()
    prompt = torch.randint(0, 258, (1, 5))
    free = model.generate(prompt, 10, temperature=0)[0]
    stop = int(free[7])  # the 3rd new token (or an earlier repeat of it)
    first = 5 + free[5:].tolist().index(stop)
    stopped = model.generate([prompt[0]], 10, temperature=0, stop_tokens=[stop])[0]
    assert stopped.tolist() == free[: first + 1].tolist()


def test_stream_yields_the_generated_tokens():
    model = HybridLM(ModelConfig.from_preset("hawk", "tiny")).eval()
    prompt = torch.randint(0, 258, (2, 5))
    streamed = torch.stack(list(model.stream(prompt, 8, temperature=0)), 1)
    assert torch.equal(torch.cat([prompt, streamed], 1), model.generate(prompt, 8, temperature=0))
