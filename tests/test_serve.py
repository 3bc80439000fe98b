"""`hybridlm serve` through the real `openai` client: completions, streaming, seeds, stop sequences,
32 concurrent requests each equal to its solo run, a client that disconnects, the prefix cache."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from hybridlm import ByteTokenizer  # noqa: E402
from hybridlm.serve.engine import Engine  # noqa: E402

from .serve_support import get_json, open_stream, running_server, save_every_state_model  # noqa: E402

TOKENIZER = ByteTokenizer()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(client, base_url, model) for a server with a small prefix block (8 tokens)."""
    directory = tmp_path_factory.mktemp("serve") / "run"
    model = save_every_state_model(directory)
    with running_server(directory, block=8) as (url, _):
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60), url, model


def solo_text(model, prompt: str, max_tokens: int, **sampling) -> str:
    """What model.generate gives for the prompt alone, up to its end-of-text token."""
    sampling.setdefault("temperature", 0)
    ids = torch.tensor(TOKENIZER.encode(prompt))
    new = model.generate([ids], max_tokens, stop_tokens=[TOKENIZER.eos_id], **sampling)[0][len(ids) :].tolist()
    return TOKENIZER.decode([token for token in new if token != TOKENIZER.eos_id])


def test_models_and_health(served):
    client, url, _ = served
    assert [model.id for model in client.models.list().data] == ["tiny"]
    health = get_json(f"{url}/health")
    assert health["status"] == "ok" and health["running"] == 0


def test_greedy_completion_is_the_solo_generation(served):
    client, _, model = served
    response = client.completions.create(model="tiny", prompt="The cat", max_tokens=12, temperature=0, logprobs=2)
    choice = response.choices[0]
    assert choice.text == solo_text(model, "The cat", 12)
    assert response.usage.prompt_tokens == 7 and response.usage.completion_tokens == len(choice.logprobs.tokens)
    ids = torch.tensor([TOKENIZER.encode("The cat")])
    with torch.no_grad():
        first = torch.log_softmax(model(ids)[0, -1].double(), -1)  # the first sampled token's logprob, recomputed
    assert choice.logprobs.token_logprobs[0] == pytest.approx(float(first.max()), abs=1e-4)
    assert max(choice.logprobs.top_logprobs[0].values()) == pytest.approx(choice.logprobs.token_logprobs[0])


def test_streaming_gives_the_same_text(served):
    client, _, _ = served
    whole = client.completions.create(model="tiny", prompt="Stream me", max_tokens=10, temperature=0)
    chunks = list(
        client.completions.create(model="tiny", prompt="Stream me", max_tokens=10, temperature=0, stream=True)
    )
    assert "".join(chunk.choices[0].text for chunk in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert len(chunks) >= 2


def test_seed_reproduces_the_solo_sampling(served):
    client, _, model = served
    kwargs = dict(model="tiny", prompt="Once upon", max_tokens=16, temperature=0.9, top_p=0.95)
    first = client.completions.create(seed=7, **kwargs).choices[0].text
    assert client.completions.create(seed=7, **kwargs).choices[0].text == first
    assert first == solo_text(model, "Once upon", 16, temperature=0.9, top_p=0.95, seed=7)
    others = {client.completions.create(seed=seed, **kwargs).choices[0].text for seed in (8, 9, 10)}
    assert others - {first}
    top_k = client.completions.create(seed=3, extra_body={"top_k": 1}, **kwargs).choices[0].text
    assert top_k == solo_text(model, "Once upon", 16)  # top-k 1 is greedy whatever the seed


@pytest.mark.parametrize("stream", [False, True])
def test_stop_sequence_ends_the_text_before_it(served, stream, monkeypatch):
    client, _, model = served
    cancel = Engine.cancel
    monkeypatch.setattr(Engine, "cancel", lambda engine, job: (time.sleep(0.3), cancel(engine, job)))  # late
    full = solo_text(model, "Stop here", 24)
    printable = [i for i in range(3, len(full) - 2) if full[i : i + 2].isprintable() and full[i : i + 2].strip()]
    assert printable, f"no printable stop candidate in {full!r}"
    cut = printable[0]
    stop = full[cut : cut + 2]
    kwargs = dict(model="tiny", prompt="Stop here", max_tokens=200, temperature=0, stop=[stop, "never-seen"])
    if stream:
        chunks = list(client.completions.create(stream=True, **kwargs))
        text, finish = "".join(c.choices[0].text for c in chunks), chunks[-1].choices[0].finish_reason
    else:
        response = client.completions.create(**kwargs)
        choice = response.choices[0]
        text, finish = choice.text, choice.finish_reason
        # the tokens up to the one that completed the stop string, not those decoded before the job stopped
        assert response.usage.completion_tokens == tokens_until(model, "Stop here", 200, stop)
        offsets = client.completions.create(**kwargs, logprobs=0).choices[0].logprobs.text_offset
        assert all(offset < len(text) for offset in offsets)  # none for the stop string's held-back start
    assert (text, finish) == (full[: full.index(stop)], "stop")


def tokens_until(model, prompt: str, max_tokens: int, stop: str) -> int:
    """How many greedy tokens the prompt alone takes until its text holds `stop`."""
    ids = torch.tensor(TOKENIZER.encode(prompt))
    new = model.generate([ids], max_tokens, stop_tokens=[TOKENIZER.eos_id], temperature=0)[0][len(ids) :].tolist()
    return next(count for count in range(1, len(new) + 1) if stop in TOKENIZER.decode(new[:count]))


def test_prompt_list_gives_one_choice_each(served):
    client, _, model = served
    prompts = ["a", "bb bb", "the third prompt"]
    response = client.completions.create(model="tiny", prompt=prompts, max_tokens=6, temperature=0)
    assert [choice.index for choice in response.choices] == [0, 1, 2]
    assert [choice.text for choice in response.choices] == [solo_text(model, p, 6) for p in prompts]


def test_32_concurrent_requests_each_equal_their_solo_run(served):
    """Mixed prompt lengths (1-53 tokens, across the window 4 and the prefix block 8) and lengths."""
    client, url, model = served
    words = "the quick brown fox jumps over a lazy dog while it rains"
    jobs = [(words[: 1 + (7 * i) % 53], 3 + (5 * i) % 14) for i in range(32)]
    steps_before = get_json(f"{url}/health")["steps"]

    def ask(job):
        prompt, max_tokens = job
        return client.completions.create(model="tiny", prompt=prompt, max_tokens=max_tokens, temperature=0)

    started = time.monotonic()
    with ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(ask, jobs))
    assert time.monotonic() - started < 60
    for (prompt, max_tokens), response in zip(jobs, responses):
        assert response.choices[0].text == solo_text(model, prompt, max_tokens), prompt
    decoded = sum(response.usage.completion_tokens - 1 for response in responses)  # first tokens come from prefill
    steps = get_json(f"{url}/health")["steps"] - steps_before
    assert steps < decoded / 2, "requests were not decoded together"


def test_a_client_that_disconnects_frees_its_rows(served):
    _, url, _ = served
    body = {"model": "tiny", "prompt": "go on and on", "max_tokens": 1000, "temperature": 0, "stream": True}
    with open_stream(f"{url}/v1/completions", body) as response:
        assert response.status == 200
        data_lines = (line for line in iter(response.readline, b"") if line.startswith(b"data: "))
        for _ in range(3):  # the first token comes from prefill, the next ones from the batch
            next(data_lines)
        assert get_json(f"{url}/health")["running"] == 1
    deadline = time.monotonic() + 10
    while get_json(f"{url}/health")["running"]:
        assert time.monotonic() < deadline, "the disconnected request kept its rows"
        time.sleep(0.05)
    assert get_json(f"{url}/health")["steps"] < 1000


def test_prefix_cache_hit_gives_identical_tokens(served, tmp_path):
    """A request resumed from the 24-token snapshot equals the same request on a server without cache."""
    client, url, _ = served
    shared = "A shared system prompt: "  # 24 bytes = three 8-token blocks
    kwargs = dict(model="tiny", max_tokens=12, temperature=0, logprobs=1)
    client.completions.create(prompt=shared + "first question", **kwargs)
    hits_before = get_json(f"{url}/health")["prefix_cache"]["hits"]
    cached = client.completions.create(prompt=shared + "second one", **kwargs)
    assert cached.usage.prompt_tokens_details.cached_tokens == 24
    assert get_json(f"{url}/health")["prefix_cache"]["hits"] == hits_before + 1
    directory = tmp_path / "same"
    save_every_state_model(directory)
    with running_server(directory, block=8, prefix_cache_bytes=0) as (plain_url, _):
        plain = openai.OpenAI(base_url=f"{plain_url}/v1", api_key="none", max_retries=0)
        fresh = plain.completions.create(prompt=shared + "second one", **kwargs)
    assert fresh.usage.prompt_tokens_details.cached_tokens == 0
    assert cached.choices[0].text == fresh.choices[0].text
    assert cached.choices[0].logprobs.token_logprobs == fresh.choices[0].logprobs.token_logprobs  # exact
