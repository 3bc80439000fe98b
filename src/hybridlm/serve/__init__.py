"""`hybridlm serve`: an OpenAI-compatible completions server with continuous batching and a prefix
state cache (engine.py, prefix_cache.py, app.py). Needs the `serve` extra (FastAPI, uvicorn)."""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import load
from ..data.tokenizer import load_tokenizer
from .engine import Engine, Event, Job, QueueFull
from .prefix_cache import PrefixCache

__all__ = ["Engine", "Event", "Job", "PrefixCache", "QueueFull", "build_app", "build_engine"]


def build_engine(
    model, max_batch: int = 16, max_waiting: int = 64, prefix_cache_bytes: int = 256 << 20, block: int = 128
) -> Engine:
    """An engine for `model`; `prefix_cache_bytes` 0 disables the prefix state cache."""
    prefix_cache = PrefixCache(prefix_cache_bytes, block) if prefix_cache_bytes > 0 else None
    return Engine(model, max_batch=max_batch, max_waiting=max_waiting, prefix_cache=prefix_cache, block=block)


def build_app(directory, model_name: str | None = None, limits=None, **engine_options):
    """The FastAPI app serving the checkpoint in `directory` (its engine thread already started);
    `limits`: a `schema.Limits`."""
    from .app import create_app

    model = load(directory)
    engine = build_engine(model, **engine_options).start()
    name = model_name or Path(directory).resolve().name
    return create_app(engine, load_tokenizer(directory), name, limits)
