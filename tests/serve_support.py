"""A hybridlm server on 127.0.0.1 and a free port, in a thread of the test process."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import hybridlm
from hybridlm import HybridLM

from .helpers import tiny_config

EVERY_STATE = {  # KV + short conv, ring buffer + short conv, conv + SSM (M, D), RG-LRU, modal, shared KV, blend
    "pattern": "A L M D R H SM P",
    "attention": {"window": 4, "short_conv": 3},
    "blend": {"ssm": "M", "attn": "L"},
}


def save_every_state_model(directory, seed: int = 0):
    """A tiny byte-vocabulary hybrid with every kind of layer state; init_std 0.3 gives varied text."""
    import torch

    torch.manual_seed(seed)
    model = HybridLM(tiny_config(vocab_size=258, init_std=0.3, **EVERY_STATE))
    hybridlm.save(model, directory)
    return model.eval()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_server(directory, **options):
    """Yield (base_url, app) of a server for `directory`; stops it (draining the engine) afterwards."""
    import uvicorn

    from hybridlm.serve import build_app

    app = build_app(directory, model_name="tiny", **options)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(20)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def post(url: str, body: bytes | dict, timeout: float = 30) -> tuple[int, dict]:
    """POST raw bytes or a JSON object; (status, parsed JSON body) whatever the status."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@contextlib.contextmanager
def open_stream(url: str, body: dict):
    """A streaming POST as a raw connection: yields the response; leaving the block hangs up."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("POST", parts.path, json.dumps(body), {"Content-Type": "application/json"})
        yield connection.getresponse()
    finally:
        connection.close()
