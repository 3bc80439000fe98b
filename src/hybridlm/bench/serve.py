"""`hybridlm bench serve`: the HTTP server under load, in this process, on 127.0.0.1.

Throughput: 16 streaming clients at once (continuous batching) against the same 16 requests sent
one after another. Time to first token: a prompt sharing a 1,024-token prefix with an earlier one,
with the prefix state cache on (the prefix restored from its snapshot) and off (prefilled again).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from ..data.tokenizer import ByteTokenizer
from ..model import HybridLM
from ..presets import preset_config
from .timing import Row

CLIENTS = 16


def serve_rows(preset: str = "jamba", size: str = "small", max_tokens: int = 64, prefix: int = 1024) -> list[Row]:
    torch.manual_seed(0)
    model = HybridLM(preset_config(preset, size)).eval()
    label = f"{preset} {size}"
    return [throughput_row(model, label, max_tokens), first_token_row(model, label, prefix)]


def throughput_row(model, label: str, max_tokens: int) -> Row:
    words = "the hybrid model keeps a state per layer and decodes every request in one batch step "
    prompts = [words[: 24 + 3 * i] for i in range(CLIENTS)]
    with serving(model, prefix_cache_bytes=0) as port:
        stream(port, prompts[0], 4)  # warm-up
        start = time.perf_counter()
        sequential = [stream(port, prompt, max_tokens) for prompt in prompts]
        sequential_s = time.perf_counter() - start
        start = time.perf_counter()
        with ThreadPoolExecutor(CLIENTS) as pool:
            concurrent = list(pool.map(lambda prompt: stream(port, prompt, max_tokens), prompts))
        concurrent_s = time.perf_counter() - start
    tokens = sum(result["tokens"] for result in concurrent)
    if tokens != sum(result["tokens"] for result in sequential):
        raise RuntimeError("concurrent and sequential greedy runs produced different token counts")
    notes = {
        "tok/s": tokens / concurrent_s,
        "sequential tok/s": tokens / sequential_s,
        "clients": CLIENTS,
        "max_tokens": max_tokens,
    }
    return Row(
        "serve", f"{CLIENTS} streaming clients, {label}", concurrent_s, sequential_s, "one after another", tokens, notes
    )


def first_token_row(model, label: str, prefix: int, repeats: int = 3) -> Row:
    """Best of `repeats` times to first token, each after the same prefix was seen by a request."""
    generator = torch.Generator().manual_seed(1)
    shared = bytes(torch.randint(97, 123, (prefix,), generator=generator).tolist()).decode()
    times = {}
    for cached in (True, False):
        with serving(model, prefix_cache_bytes=(1 << 30) if cached else 0) as port:
            stream(port, shared + " first question", 2)  # fills the cache (when on)
            times[cached] = min(
                stream(port, shared + f" question {index:03d}", 2)["first_token_s"] for index in range(repeats)
            )
    notes = {"prefix tokens": prefix, "cached ms": times[True] * 1e3, "uncached ms": times[False] * 1e3}
    return Row(
        "serve",
        f"time to first token, {prefix}-token shared prefix, {label}",
        times[True],
        times[False],
        "no prefix cache",
        1,
        notes,
    )


@contextlib.contextmanager
def serving(model, **engine_options):
    """Yield the port of a server for `model` running in a thread; stop it afterwards."""
    import uvicorn

    from ..serve import build_engine
    from ..serve.app import create_app

    app = create_app(build_engine(model, **engine_options).start(), ByteTokenizer(), "bench")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the benchmark server did not start")
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join()


def stream(port: int, prompt: str, max_tokens: int) -> dict:
    """One greedy streaming completion: {'tokens': completion tokens, 'first_token_s': seconds}."""
    body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    body["stream_options"] = {"include_usage": True}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
    first, tokens = None, 0
    try:
        connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"benchmark request failed: HTTP {response.status} {response.read()[:200]!r}")
        for line in iter(response.readline, b""):
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            chunk = json.loads(line[6:])
            if first is None:
                first = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    finally:
        connection.close()
    return {"tokens": tokens, "first_token_s": first}
