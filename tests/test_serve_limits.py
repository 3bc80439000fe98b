"""Bad requests get their HTTP status and an OpenAI error object; a full queue gets 429; SIGTERM
drains in-flight requests and exits; the server keeps serving after every refusal."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from hybridlm.serve.schema import Limits  # noqa: E402

from .serve_support import (  # noqa: E402
    free_port,
    get_json,
    open_stream,
    post,
    running_server,
    save_every_state_model,
)

GOOD = {"model": "tiny", "prompt": "hello", "max_tokens": 4, "temperature": 0}

BAD_REQUESTS = {
    "malformed JSON": (b'{"model": "tiny", "prompt": ', 400),
    "not an object": (b"[1, 2]", 400),
    "unknown field": ({**GOOD, "temprature": 0.5}, 400),
    "wrong type": ({**GOOD, "max_tokens": "4"}, 400),
    "wrong prompt type": ({**GOOD, "prompt": {"text": "hi"}}, 400),
    "missing prompt": ({"model": "tiny", "max_tokens": 4}, 400),
    "prompt too long": ({**GOOD, "prompt": "x" * 70}, 400),
    "prompt + max_tokens too long": ({**GOOD, "prompt": "x" * 61}, 400),
    "max_tokens over the cap": ({**GOOD, "max_tokens": 33}, 400),
    "max_tokens zero": ({**GOOD, "max_tokens": 0}, 400),
    "n above 1": ({**GOOD, "n": 2}, 400),
    "temperature out of range": ({**GOOD, "temperature": -1}, 400),
    "top_p zero": ({**GOOD, "top_p": 0}, 400),
    "too many logprobs": ({**GOOD, "logprobs": 6}, 400),
    "empty prompt": ({**GOOD, "prompt": ""}, 400),
    "empty prompt list": ({**GOOD, "prompt": []}, 400),
    "token id out of range": ({**GOOD, "prompt": [1, 2, 9999]}, 400),
    "echo": ({**GOOD, "echo": True}, 400),
    "seed beyond 64 bits": ({**GOOD, "seed": 2**64}, 400),  # was a 500 (an overflow in the engine)
    "temperature NaN": ({**GOOD, "temperature": float("nan")}, 400),
    "stream_options without stream": ({**GOOD, "stream_options": {"include_usage": True}}, 400),
    "an empty token-id list": ({**GOOD, "prompt": [[1, 2], []]}, 400),
    "unknown model": ({**GOOD, "model": "gpt-9"}, 404),
}


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    directory = tmp_path_factory.mktemp("limits") / "run"
    save_every_state_model(directory)
    with running_server(directory, limits=Limits(max_context=64, max_tokens=32)) as (url, _):
        yield url


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request_gets_its_status_and_an_error_object(limited, case):
    body, status = BAD_REQUESTS[case]
    got, answer = post(f"{limited}/v1/completions", body)
    assert got == status, answer
    assert set(answer["error"]) == {"message", "type", "param", "code"} and answer["error"]["message"]
    assert post(f"{limited}/v1/completions", GOOD)[0] == 200  # still serving


def test_malformed_json_is_named_as_such(limited):
    status, answer = post(f"{limited}/v1/completions", b'{"model": "tiny", "prompt": ')
    assert status == 400 and answer["error"]["message"].startswith("the body is not valid JSON")
    assert answer["error"]["param"] is None


def test_an_unknown_route_answers_in_openai_shape(limited):
    status, answer = post(f"{limited}/v1/chat/completions", GOOD)
    assert status == 404 and set(answer["error"]) == {"message", "type", "param", "code"}
    assert answer["error"]["message"].startswith("POST /v1/chat/completions: Not Found; this server has POST /v1/")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"prompt": {"text": "hi"}}, "prompt: must be a string, a list of strings, a list of token ids or a list of"),
        ({"temperature": float("nan")}, "temperature: Input should be a finite number"),
        ({"stream_options": {"include_usage": True}}, "stream_options: only allowed when stream is true"),
        ({"seed": -(2**63) - 1}, "seed: Input should be greater than or equal to -9223372036854775808"),
    ],
)
def test_refusals_say_what_was_wrong(limited, change, message):
    status, answer = post(f"{limited}/v1/completions", {**GOOD, **change})
    assert status == 400 and answer["error"]["message"].startswith(message), answer


def test_a_list_of_token_id_lists_is_one_completion_each(limited):
    status, answer = post(f"{limited}/v1/completions", {**GOOD, "prompt": [[104, 105], [106]], "seed": 2**64 - 1})
    assert status == 200 and [choice["index"] for choice in answer["choices"]] == [0, 1]
    assert answer["usage"]["prompt_tokens"] == 3


def test_prompt_of_token_ids_and_limits_at_the_edge(limited):
    status, answer = post(f"{limited}/v1/completions", {**GOOD, "prompt": [104, 105], "max_tokens": 32})
    assert status == 200 and answer["usage"]["prompt_tokens"] == 2
    status, _ = post(f"{limited}/v1/completions", {**GOOD, "prompt": "x" * 32, "max_tokens": 32})  # exactly 64
    assert status == 200


def test_a_full_queue_answers_429(tmp_path):
    """One request decoding (batch of 1), one waiting (queue of 1): the third is refused, not queued."""
    directory = tmp_path / "run"
    save_every_state_model(directory)
    with running_server(directory, max_batch=1, max_waiting=1) as (url, _):
        long = {**GOOD, "max_tokens": 400, "stream": True}
        with open_stream(f"{url}/v1/completions", long) as first:
            assert first.readline().startswith(b"data: ")
            waiting = threading.Thread(target=post, args=(f"{url}/v1/completions", GOOD, 60))
            waiting.start()
            deadline = time.monotonic() + 10
            while get_json(f"{url}/health")["waiting"] < 1:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            status, answer = post(f"{url}/v1/completions", GOOD)
            assert status == 429 and answer["error"]["code"] == "rate_limit_exceeded"
        waiting.join(30)
        assert not waiting.is_alive()
        assert post(f"{url}/v1/completions", GOOD)[0] == 200


def test_sigterm_drains_in_flight_requests_and_exits(tmp_path):
    directory = tmp_path / "run"
    save_every_state_model(directory)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "hybridlm.cli", "serve", str(directory), "--port", str(port), "--model-name", "tiny"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                get_json(f"{url}/health")
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, server.stderr.read().decode()
                time.sleep(0.1)
        body = {**GOOD, "max_tokens": 60, "stream": True}
        with open_stream(f"{url}/v1/completions", body) as response:
            lines = iter(response.readline, b"")
            first = next(line for line in lines if line.startswith(b"data: "))
            server.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line.startswith(b"data: ")]
        chunks = [json.loads(line[6:]) for line in [first, *rest] if line != b"data: [DONE]\n"]
        assert rest[-1] == b"data: [DONE]\n"
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        # uvicorn re-raises the signal once drained: ended by SIGTERM, which supervisors count as a clean stop
        assert server.wait(30) in (0, -signal.SIGTERM)
        assert b"Traceback" not in server.stderr.read()
    finally:
        if server.poll() is None:
            os.kill(server.pid, signal.SIGKILL)
            server.wait()


def test_serve_command_refuses_bad_input_in_one_line(tmp_path, capsys):
    from hybridlm.cli import main

    assert main(["serve", str(tmp_path / "missing"), "--port", str(free_port())]) == 2
    assert "no such checkpoint directory" in capsys.readouterr().err
    directory = tmp_path / "run"
    save_every_state_model(directory)
    with socket.create_server(("127.0.0.1", 0)) as busy:
        assert main(["serve", str(directory), "--port", str(busy.getsockname()[1])]) == 2
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err
    assert main(["serve", str(directory), "--max-batch", "0"]) == 2
    capsys.readouterr()
    assert main(["serve", str(directory), "--port", "99999"]) == 2  # a traceback from socket.bind before
    assert capsys.readouterr().err.strip() == "hybridlm serve: error: --port must be in 0..65535, not 99999"


def test_a_failing_step_fails_its_requests_and_the_server_keeps_serving(tmp_path):
    directory = tmp_path / "run"
    save_every_state_model(directory)
    with running_server(directory) as (url, app):
        model = app.state.engine.model
        model.forward = lambda *args, **kwargs: (_ for _ in ()).throw(RuntimeError("simulated out of memory"))
        status, answer = post(f"{url}/v1/completions", GOOD)
        assert status == 500 and "simulated out of memory" in answer["error"]["message"]
        del model.forward  # the class's forward again
        assert post(f"{url}/v1/completions", GOOD)[0] == 200
        deadline = time.monotonic() + 10
        while get_json(f"{url}/health")["running"]:  # the last event is sent just before the rows leave
            assert time.monotonic() < deadline
            time.sleep(0.01)
