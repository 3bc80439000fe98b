"""Rows of whole caches join, leave and are snapshotted without changing what any row computes."""

import pytest
import torch

from hybridlm import HybridLM
from hybridlm.cache import clone_cache, concat_caches, drop_rows

from .helpers import tiny_config

EVERY_STATE = {  # KV + short conv, ring buffer + short conv, conv + SSM (M, D), RG-LRU, modal, shared KV, blend
    "pattern": "A L M D R H SM P",
    "attention": {"window": 4, "short_conv": 3},
    "blend": {"ssm": "M", "attn": "L"},
}


def every_state_model():
    return HybridLM(tiny_config(**EVERY_STATE)).eval()


def solo_logits(model, prompt, steps):
    """Logits of the prompt's last token, then of each of `steps` greedy decoding steps, alone."""
    cache = model.allocate_cache(1)
    logits = [model(prompt.unsqueeze(0), cache=cache)[:, -1]]
    for _ in range(steps):
        logits.append(model(logits[-1].argmax(-1, keepdim=True), cache=cache)[:, -1])
    return torch.cat(logits)


def test_rows_join_and_leave_mid_decoding():
    """Prompts of lengths 3, 9 and 6 (around the window 4) join a batch at different steps and leave."""
    model = every_state_model()
    with torch.inference_mode():
        check_join_and_leave(model)


def check_join_and_leave(model):
    prompts = [torch.randint(0, 50, (n,)) for n in (3, 9, 6)]
    steps = 8
    expected = [solo_logits(model, prompt, steps) for prompt in prompts]
    got = [[] for _ in prompts]
    rows, batch = [], None
    next_token = {}
    for step in range(steps + 4):
        joining = step // 2  # request i joins at step 2 i, after its own prefill
        if step % 2 == 0 and joining < len(prompts):
            cache = model.allocate_cache(1)
            logits = model(prompts[joining].unsqueeze(0), cache=cache)[:, -1]
            got[joining].append(logits)
            next_token[joining] = logits.argmax(-1)
            batch = cache if batch is None else concat_caches([batch, cache])
            rows.append(joining)
        done = [row for row in rows if len(got[row]) == steps + 1]
        if done:
            batch = drop_rows(batch, [i for i, row in enumerate(rows) if row not in done])
            rows = [row for row in rows if row not in done]
        if not rows:
            break
        tokens = torch.cat([next_token[row] for row in rows]).unsqueeze(1)
        logits = model(tokens, cache=batch)[:, -1]
        for i, row in enumerate(rows):
            got[row].append(logits[i : i + 1])
            next_token[row] = logits[i : i + 1].argmax(-1)
    for row, want in enumerate(expected):
        assert len(got[row]) == steps + 1
        torch.testing.assert_close(torch.cat(got[row]), want, atol=1e-5, rtol=1e-4)


def test_clone_is_an_exact_independent_snapshot():
    model = every_state_model()
    with torch.inference_mode():
        check_clone(model)


def check_clone(model):
    prefix, rest = torch.randint(0, 50, (1, 7)), torch.randint(0, 50, (1, 5))
    cache = model.allocate_cache(1)
    model(prefix, cache=cache)
    snapshot = clone_cache(cache)
    first = model(rest, cache=cache)
    again = model(rest, cache=snapshot)  # the snapshot did not move when the original did
    assert torch.equal(first, again)
    assert snapshot.nbytes() <= cache.nbytes()


@pytest.mark.parametrize("keep", [[1], [0, 2], []])
def test_drop_rows_frees_slots_no_row_uses(keep):
    model = every_state_model()
    with torch.inference_mode():
        caches = []
        for n in (12, 3, 5):
            cache = model.allocate_cache(1)
            model(torch.randint(0, 50, (1, n)), cache=cache)
            caches.append(cache)
        batch = drop_rows(concat_caches(caches), keep)
    kv = batch.states[0].kv
    assert batch.batch_size == len(keep)
    assert kv.length == max([(12, 3, 5)[i] for i in keep], default=0)


def test_prefix_cache_keeps_the_longest_match_within_its_byte_budget():
    from hybridlm.serve.prefix_cache import PrefixCache

    model = every_state_model()
    prompt = torch.randint(0, 50, (30,)).tolist()
    snapshots = {}
    with torch.inference_mode():
        cache = model.allocate_cache(1)
        for end in (8, 16, 24):
            model(torch.tensor([prompt[end - 8 : end]]), cache=cache)
            snapshots[end] = clone_cache(cache)
    budget = snapshots[16].nbytes() + snapshots[24].nbytes()
    prefix_cache = PrefixCache(budget, block=8)
    for end, snapshot in snapshots.items():
        prefix_cache.store(prompt[:end], snapshot)
    assert prefix_cache.bytes <= budget and len(prefix_cache.snapshots) == 2  # the 8-token one was evicted
    assert prefix_cache.lookup(prompt)[0] == 24
    assert prefix_cache.lookup(prompt[:20])[0] == 16
    assert prefix_cache.lookup(prompt[:12]) == (0, None)
    assert prefix_cache.lookup(prompt[:24])[0] == 16  # the last token is always run, never restored
    _, restored = prefix_cache.lookup(prompt)
    assert torch.equal(restored.states[0].kv.keys, snapshots[24].states[0].kv.keys)
    assert prefix_cache.stats()["hits"] == 4
