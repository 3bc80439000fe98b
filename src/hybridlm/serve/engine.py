"""Continuous batching: concurrent requests decoded together, one batch step at a time.

One thread owns the model. Each turn it prefills, then runs one decoding step of every running
request. Prefill takes either the short prompts at the head of the queue (each within one prefix
block) together in one left-padded batch, or one chunk of a longer prompt, alone and unpadded,
chunked at block multiples so that the prefix cache can resume it exactly. A request joins the
batch after its prefill, its rows of every layer's state (KV, ring buffer, conv, SSM, modal)
appended by `concat_caches`; it leaves when done or cancelled, its rows dropped by `drop_rows`;
the other rows are untouched either way, so greedy output is the solo run's whatever else is in
flight. Each request samples with its own generator.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..cache import Cache, concat_caches, drop_rows
from ..generate import left_pad, sample
from .prefix_cache import PrefixCache

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """The waiting queue is at its bound: the caller should retry later (HTTP 429)."""


@dataclass
class Event:
    """One sampled token, or the end of a job (`finish` set: 'length', 'stop', 'cancelled' or 'error')."""

    token: int | None = None
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    finish: str | None = None
    error: str | None = None


@dataclass
class Job:
    """A prompt to continue; `emit` receives each Event (from the engine thread)."""

    prompt: list[int]
    max_tokens: int
    emit: Callable[[Event], None]
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    logprobs: int | None = None  # how many alternatives to report per token (0: the sampled one only)
    stop_tokens: frozenset[int] = frozenset()
    cancelled: bool = False
    produced: int = 0
    cached_tokens: int = 0  # prompt tokens restored from the prefix cache
    generator: torch.Generator | None = field(default=None, repr=False)  # made by the engine, on its device


class Engine:
    def __init__(
        self, model, max_batch: int = 16, max_waiting: int = 64, prefix_cache: PrefixCache | None = None, block=128
    ):
        self.model = model.eval()
        self.max_batch, self.max_waiting = max_batch, max_waiting
        self.prefix_cache = prefix_cache
        self.block = prefix_cache.block if prefix_cache is not None else block
        self.waiting: deque[Job] = deque()
        self.running: list[Job] = []
        self.batch: Cache | None = None  # the running jobs' rows, in `running` order
        self.next_tokens: list[int] = []  # each running job's last sampled token, fed at the next step
        self.prefilling: tuple[Job, Cache, int] | None = None  # (job, its cache, tokens done)
        self.admitting: list[Job] = []  # short prompts taken from the queue, prefilled together this turn
        self.steps = 0
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="hybridlm-engine", daemon=True)

    # ---- called from other threads ---------------------------------------------------------------
    def start(self) -> Engine:
        self._thread.start()
        return self

    def submit(self, jobs: list[Job]) -> None:
        """Queue jobs (all or none); raises QueueFull when the queue has no room for them."""
        with self._wake:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self.waiting) + len(jobs) > self.max_waiting:
                raise QueueFull(f"{len(self.waiting)} requests are waiting (at most {self.max_waiting})")
            for job in jobs:
                job.generator = torch.Generator(device=self.model.embed_tokens.weight.device)
                if job.seed is None:
                    job.generator.seed()
                else:
                    job.generator.manual_seed(job.seed)
            self.waiting.extend(jobs)
            self._wake.notify()

    def cancel(self, job: Job) -> None:
        """Stop a job at the next step; its rows are freed (a disconnected client, a stop string)."""
        with self._wake:
            job.cancelled = True
            self._wake.notify()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def stop(self, timeout: float | None = None) -> None:
        """Finish every queued and running job, then end the engine thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def stats(self) -> dict:
        stats = {"running": len(self.running), "waiting": len(self.waiting) + (self.prefilling is not None)}
        stats["steps"] = self.steps
        if self.prefix_cache is not None:
            stats["prefix_cache"] = self.prefix_cache.stats()
        return stats

    # ---- the engine thread -------------------------------------------------------------------------
    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not (self.waiting or self.running or self.prefilling or self._stopping):
                        self._wake.wait()
                    if self._stopping and not (self.waiting or self.running or self.prefilling):
                        return
                self._turn()

    def _turn(self) -> None:
        """One prefill chunk (if a request is waiting and the batch has room), then one decoding step."""
        self.admitting = []
        try:
            self._drop_cancelled()
            if self.prefilling is None and self.waiting and len(self.running) < self.max_batch:
                self.admitting = self._take_short_prompts()
                if self.admitting:
                    self._prefill_together(self.admitting)
                else:
                    with self._wake:
                        job = self.waiting.popleft()
                    self._start_prefill(job)
            if self.prefilling is not None:
                self._prefill_chunk()
            if self.running:
                self._decode_step()
        except Exception as error:  # a bug or out of memory: fail the jobs in hand, keep serving
            log.exception("engine step failed")
            jobs = self.running + ([self.prefilling[0]] if self.prefilling else [])
            jobs += [job for job in self.admitting if job not in self.running]
            for job in jobs:
                job.emit(Event(finish="error", error=f"{type(error).__name__}: {error}"))
            self.running, self.next_tokens, self.batch, self.prefilling = [], [], None, None

    def _drop_cancelled(self) -> None:
        with self._wake:
            cancelled = [job for job in self.waiting if job.cancelled]
            for job in cancelled:
                self.waiting.remove(job)
        for job in cancelled:
            job.emit(Event(finish="cancelled"))
        if self.prefilling is not None and self.prefilling[0].cancelled:
            self.prefilling[0].emit(Event(finish="cancelled"))
            self.prefilling = None
        self._leave([index for index, job in enumerate(self.running) if job.cancelled], "cancelled")

    def _take_short_prompts(self) -> list[Job]:
        """Waiting jobs at the head of the queue whose prompt fits in one block (nothing to resume
        from a snapshot), as many as the batch has room for."""
        room = self.max_batch - len(self.running)
        with self._wake:
            jobs = []
            while self.waiting and len(jobs) < room and 0 < len(self.waiting[0].prompt) <= self.block:
                jobs.append(self.waiting.popleft())
        return jobs

    def _prefill_together(self, jobs: list[Job]) -> None:
        """Prefill fresh short prompts in one left-padded batch (padding never reaches a state or a
        KV slot a real token attends to), sample each first token, and join the batch."""
        ids, mask = left_pad([torch.tensor(job.prompt) for job in jobs], self.model.embed_tokens.weight.device)
        cache = self.model.allocate_cache(len(jobs))
        logits = self.model(ids, cache=cache, attention_mask=mask, logits_to_keep=1)[:, -1]
        joined = []
        for index, job in enumerate(jobs):
            token = self._sample_and_emit(job, logits[index : index + 1])
            if token is not None:
                joined.append(index)
                self.running.append(job)
                self.next_tokens.append(token)
        if joined:
            cache = drop_rows(cache, joined) if len(joined) < len(jobs) else cache
            self.batch = cache if self.batch is None else concat_caches([self.batch, cache])

    def _start_prefill(self, job: Job) -> None:
        done, cache = 0, None
        if self.prefix_cache is not None:
            done, cache = self.prefix_cache.lookup(job.prompt)
        job.cached_tokens = done
        self.prefilling = (job, cache if cache is not None else self.model.allocate_cache(1), done)

    def _prefill_chunk(self) -> None:
        """Run the prompt up to the next multiple of `block` (or its end); the chunking never depends
        on what the prefix cache holds, so a resumed prompt computes exactly what a fresh one does."""
        job, cache, done = self.prefilling
        end = min((done // self.block + 1) * self.block, len(job.prompt))
        chunk = torch.tensor([job.prompt[done:end]], device=cache.seen.device)
        logits = self.model(chunk, cache=cache, logits_to_keep=1)[:, -1]
        if end < len(job.prompt):
            if self.prefix_cache is not None:
                self.prefix_cache.store(job.prompt[:end], cache)
            self.prefilling = (job, cache, end)
            return
        self.prefilling = None
        token = self._sample_and_emit(job, logits)
        if token is not None:
            self.batch = cache if self.batch is None else concat_caches([self.batch, cache])
            self.running.append(job)
            self.next_tokens.append(token)

    def _decode_step(self) -> None:
        tokens = torch.tensor(self.next_tokens, device=self.batch.seen.device).unsqueeze(1)
        logits = self.model(tokens, cache=self.batch)[:, -1]
        self.steps += 1
        finished = []
        for index, job in enumerate(self.running):
            token = self._sample_and_emit(job, logits[index : index + 1])
            if token is None:
                finished.append(index)
            else:
                self.next_tokens[index] = token
        self._leave(finished, None)

    def _sample_and_emit(self, job: Job, logits: torch.Tensor) -> int | None:
        """Sample the job's next token from (1, V) logits and emit it; None when the job is done."""
        token = int(sample(logits, job.temperature, job.top_k, job.top_p, job.generator)[0])
        event = Event(token=token)
        if job.logprobs is not None:
            logprobs = torch.log_softmax(logits[0].float(), dim=-1)
            event.logprob = float(logprobs[token])
            if job.logprobs > 0:
                values, ids = logprobs.topk(job.logprobs)
                event.top_logprobs = list(zip(ids.tolist(), values.tolist()))
        job.produced += 1
        if token in job.stop_tokens:
            event.finish = "stop"
        elif job.produced >= job.max_tokens:
            event.finish = "length"
        job.emit(event)
        return None if event.finish else token

    def _leave(self, indices: list[int], reason: str | None) -> None:
        """Remove running jobs at `indices` and their cache rows; emit `reason` to them if given."""
        if not indices:
            return
        gone = set(indices)
        for index in indices:
            if reason is not None:
                self.running[index].emit(Event(finish=reason))
        keep = [index for index in range(len(self.running)) if index not in gone]
        self.running = [self.running[index] for index in keep]
        self.next_tokens = [self.next_tokens[index] for index in keep]
        self.batch = drop_rows(self.batch, keep) if keep else None
