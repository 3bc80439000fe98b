"""The OpenAI-compatible HTTP routes: GET /health, GET /v1/models, POST /v1/completions.

Requests become engine jobs; the engine thread hands each sampled token to the request's asyncio
queue. Text (stop sequences, unfinished characters) is assembled here; a stop sequence or a client
that goes away cancels the job, which frees its rows at the engine's next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .engine import Engine, Event, Job, QueueFull
from .schema import PROMPT_TYPES, CompletionRequest, Limits, RequestError, error_body
from .text import TextStream

log = logging.getLogger(__name__)
POLL_SECONDS = 0.25  # how often a non-streaming request checks that its client is still there


def create_app(engine: Engine, tokenizer, model_name: str, limits: Limits | None = None) -> FastAPI:
    limits = limits or Limits()

    @asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.to_thread(engine.stop)  # drain: uvicorn has let in-flight requests finish

    app = FastAPI(title="hybridlm", lifespan=lifespan)
    app.state.engine = engine

    @app.exception_handler(RequestValidationError)
    async def invalid(request, error: RequestValidationError):
        first = error.errors()[0] if error.errors() else {}
        if first.get("type") == "json_invalid":  # its location is a character offset, not a field
            reason = first.get("ctx", {}).get("error", "")
            message = f"the body is not valid JSON{f' ({reason})' if reason else ''} at character {first['loc'][-1]}"
            return JSONResponse(error_body(message), status_code=400)
        location = [str(part) for part in first.get("loc", ()) if part != "body"]
        if location[:1] == ["prompt"]:  # pydantic names the first union member it tried ("prompt.str: ...")
            location, first = ["prompt"], {"msg": f"must be {PROMPT_TYPES}"}
        message = f"{'.'.join(location) + ': ' if location else ''}{first.get('msg', 'invalid request')}"
        return JSONResponse(error_body(message, param=".".join(location) or None), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def unrouted(request, error: StarletteHTTPException):  # an unknown route or method, OpenAI's shape
        routes = "POST /v1/completions, GET /v1/models and GET /health"
        message = f"{request.method} {request.url.path}: {error.detail}; this server has {routes}"
        return JSONResponse(error_body(message), status_code=error.status_code)

    @app.exception_handler(RequestError)
    async def refused(request, error: RequestError):
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(Exception)
    async def failed(request, error: Exception):
        log.exception("request failed")
        return JSONResponse(error_body(f"internal error: {type(error).__name__}", "server_error"), status_code=500)

    @app.get("/health")
    async def health():
        return {"status": "ok", **engine.stats()}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "hybridlm"}]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        if body.model != model_name:
            raise RequestError(
                404,
                f"the model {body.model!r} does not exist; this server has {model_name!r}",
                "model",
                "model_not_found",
            )
        completion = Completion(body, engine, tokenizer, model_name, limits, asyncio.get_running_loop())
        completion.submit()
        if body.stream:
            return StreamingResponse(completion.sse(), media_type="text/event-stream")
        return await completion.collect(request)

    return app


class Completion:
    """One /v1/completions request: its jobs (one per prompt), their events and text."""

    def __init__(self, body: CompletionRequest, engine: Engine, tokenizer, model_name, limits, loop):
        self.body, self.engine, self.tokenizer, self.loop = body, engine, tokenizer, loop
        self.id, self.created, self.model_name = f"cmpl-{uuid.uuid4().hex}", int(time.time()), model_name
        self.events: asyncio.Queue = asyncio.Queue()
        stop = body.stop_sequences()
        if len(stop) > limits.max_stop:
            raise RequestError(400, f"at most {limits.max_stop} stop sequences", "stop")
        prompts = [self._encode(prompt, limits) for prompt in body.prompts()]
        if not prompts:
            raise RequestError(400, "prompt is empty", "prompt")
        stop_tokens = frozenset() if tokenizer.eos_id is None else frozenset([tokenizer.eos_id])
        self.jobs = [
            Job(
                prompt=ids,
                max_tokens=body.max_tokens,
                emit=self._emitter(index),
                temperature=body.temperature,
                top_k=body.top_k,
                top_p=None if body.top_p == 1 else body.top_p,
                seed=body.seed,
                logprobs=body.logprobs,
                stop_tokens=stop_tokens,
            )
            for index, ids in enumerate(prompts)
        ]
        self.texts = [TextStream(tokenizer, stop) for _ in prompts]
        self.logprobs = [_empty_logprobs() for _ in prompts]
        self.finish: list[str | None] = [None] * len(prompts)

    def _encode(self, prompt, limits: Limits) -> list[int]:
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else prompt
        if not ids:
            raise RequestError(400, "every prompt needs at least one token", "prompt")
        vocab = self.engine.model.config.vocab_size
        if any(not 0 <= token < vocab for token in ids):
            raise RequestError(400, f"token ids must be in [0, {vocab})", "prompt")
        if self.body.max_tokens > limits.max_tokens:
            raise RequestError(400, f"max_tokens is {self.body.max_tokens}, at most {limits.max_tokens}", "max_tokens")
        if len(ids) + self.body.max_tokens > limits.max_context:
            raise RequestError(
                400,
                f"this model's maximum context length is {limits.max_context} tokens, however you requested "
                f"{len(ids) + self.body.max_tokens} tokens ({len(ids)} in your prompt; {self.body.max_tokens} for "
                "the completion)",
                "prompt",
                "context_length_exceeded",
            )
        return ids

    def _emitter(self, index: int):
        def emit(event: Event) -> None:  # runs on the engine thread
            with contextlib.suppress(RuntimeError):  # a closed event loop (server stopped): nobody listens
                self.loop.call_soon_threadsafe(self.events.put_nowait, (index, event))

        return emit

    def submit(self) -> None:
        try:
            self.engine.submit(self.jobs)
        except QueueFull as error:
            if self.engine.stopping:
                raise RequestError(503, f"{error}", code="shutting_down", kind="server_error") from None
            raise RequestError(
                429, f"server busy: {error}; retry later", code="rate_limit_exceeded", kind="rate_limit_error"
            ) from None

    def cancel(self) -> None:
        for index, job in enumerate(self.jobs):
            if self.finish[index] is None:
                self.engine.cancel(job)

    async def next_piece(self) -> tuple[int, str, str | None] | None:
        """Wait for an event; returns (choice index, new text, finish reason or None), or None for
        an event that comes after its choice ended (a stop sequence cancelled the job)."""
        index, event = await self.events.get()
        if self.finish[index] is not None:
            return None
        if event.error is not None:
            raise RequestError(500, f"generation failed: {event.error}")
        text, stream = "", self.texts[index]
        if event.token is not None:
            offset = len(stream.text)
            text = stream.push(event.token)
            if self.body.logprobs is not None and (text or not stream.stopped):
                self._add_logprob(index, event, offset)
        finish = "stop" if stream.stopped else event.finish
        if finish is not None:
            text += stream.finish()
            self.finish[index] = "stop" if finish == "stop" else "length"
            if stream.stopped:
                self.engine.cancel(self.jobs[index])
                self._drop_stop_logprobs(index, len(stream.text))
        return index, text, self.finish[index]

    def _add_logprob(self, index: int, event: Event, offset: int) -> None:
        logprobs = self.logprobs[index]
        logprobs["tokens"].append(self._token_text(event.token))
        logprobs["token_logprobs"].append(event.logprob)
        logprobs["text_offset"].append(offset)
        if event.top_logprobs is not None:
            top = {self._token_text(token): value for token, value in event.top_logprobs}
            logprobs["top_logprobs"].append(top)

    def _drop_stop_logprobs(self, index: int, length: int) -> None:
        """Forget the tokens held back as the start of the stop string (none of their text was sent):
        the logprobs cover the returned text, as OpenAI's do."""
        logprobs = self.logprobs[index]
        kept = sum(offset < length for offset in logprobs["text_offset"])
        for values in logprobs.values():
            del values[kept:]

    def _token_text(self, token: int) -> str:
        """A token's text; `token_id:N` for one that is not text alone (part of a character, special)."""
        text = self.tokenizer.decode([token])
        return text if text and "\ufffd" not in text else f"token_id:{token}"

    @property
    def done(self) -> bool:
        return all(reason is not None for reason in self.finish)

    async def collect(self, request: Request) -> dict:
        """Wait for every choice (cancelling the jobs if the client leaves) and build the response."""
        texts = [""] * len(self.jobs)
        try:
            while not self.done:
                try:
                    piece = await asyncio.wait_for(self.next_piece(), POLL_SECONDS)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        self.cancel()
                        return {}
                    continue
                if piece is not None:
                    texts[piece[0]] += piece[1]
        finally:
            if not self.done:
                self.cancel()
        choices = [self._choice(index, texts[index], self.finish[index]) for index in range(len(self.jobs))]
        return {**self._header(), "choices": choices, "usage": self._usage()}

    async def sse(self):
        """Server-sent events: one chunk per sampled token (its text may be held back, then empty);
        a closed connection cancels."""
        try:
            while not self.done:
                piece = await self.next_piece()
                if piece is not None:
                    index, text, finish = piece
                    chunk = {**self._header(), "choices": [self._choice(index, text, finish, streaming=True)]}
                    yield f"data: {json.dumps(chunk)}\n\n"
            if self.body.stream_options is not None and self.body.stream_options.include_usage:
                yield f"data: {json.dumps({**self._header(), 'choices': [], 'usage': self._usage()})}\n\n"
            yield "data: [DONE]\n\n"
        except RequestError as error:
            yield f"data: {json.dumps(error.body())}\n\n"
        finally:
            if not self.done:
                self.cancel()

    def _header(self) -> dict:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model_name}

    def _choice(self, index: int, text: str, finish, streaming: bool = False) -> dict:
        logprobs = None
        if self.body.logprobs is not None:
            logprobs = self.logprobs[index]
            if streaming:  # each chunk carries the logprobs of its own tokens
                logprobs = {key: value[:] for key, value in logprobs.items()}
                self.logprobs[index] = _empty_logprobs()
            if self.body.logprobs == 0:
                logprobs["top_logprobs"] = None
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}

    def _usage(self) -> dict:
        prompt = sum(len(job.prompt) for job in self.jobs)
        # the tokens each choice's text read: a job stopped by a stop string decodes on until the engine
        # sees the cancel, and those tokens are neither sent nor counted
        completion = sum(len(text.tokens) for text in self.texts)
        cached = sum(job.cached_tokens for job in self.jobs)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        }


def _empty_logprobs() -> dict:
    return {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
