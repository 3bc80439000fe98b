"""`hybridlm serve`: an OpenAI-compatible HTTP server for a saved model (the `serve` extra)."""

from __future__ import annotations

import logging
import socket

from ..config import ConfigError

HELP = "serve a saved model over an OpenAI-compatible HTTP API (continuous batching, prefix state cache)"


def add_arguments(parser) -> None:
    parser.add_argument("directory", help="a directory written by hybridlm.save or `hybridlm train`")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: localhost only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model-name", default=None, help="the id clients send as `model` (default: directory name)")
    parser.add_argument("--max-batch", type=int, default=16, help="requests decoded together at most")
    parser.add_argument("--max-waiting", type=int, default=64, help="queued requests at most; more get HTTP 429")
    parser.add_argument("--max-context", type=int, default=8192, help="prompt + completion tokens at most")
    parser.add_argument("--max-tokens", type=int, default=1024, help="cap on a request's max_tokens")
    parser.add_argument("--prefix-cache-mb", type=float, default=256, help="prefix state cache budget (0: off)")
    parser.add_argument("--prefix-block", type=int, default=128, help="prefixes are cached at multiples of this")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")


def run(args) -> None:
    try:
        import uvicorn

        from ..serve import build_app
        from ..serve.schema import Limits
    except ImportError as error:
        raise ConfigError(f"serving needs the serve extra: pip install 'hybridlm[serve]' ({error})") from None
    import torch

    for name in ("max_batch", "max_waiting", "max_context", "max_tokens", "prefix_block"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    check_port(args.host, args.port)
    app = build_app(
        args.directory,
        model_name=args.model_name,
        limits=Limits(max_context=args.max_context, max_tokens=args.max_tokens),
        max_batch=args.max_batch,
        max_waiting=args.max_waiting,
        prefix_cache_bytes=int(args.prefix_cache_mb * (1 << 20)),
        block=args.prefix_block,
    )
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="info")).run()


def check_port(host: str, port: int) -> None:
    """Refuse a port out of range or held by another process, with one line instead of uvicorn's exit."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, not {port}")
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as error:
        raise ConfigError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
