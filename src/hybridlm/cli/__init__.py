"""The `hybridlm` command line. Only this package prints and exits; the library returns values.

One module per verb, each with `HELP`, `add_arguments(parser)` and `run(args)`; adding a verb is
one file plus one entry in `VERBS`. Errors a user can cause end with one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..checkpoint import CheckpointError
from ..config import ConfigError
from ..pattern import PatternError
from ..runtime import tune_allocator

VERBS = ["presets", "inspect", "analyze", "train", "eval", "sweep", "generate", "convert", "bench", "demo", "context"]
USER_ERRORS = (ConfigError, PatternError, CheckpointError, FileNotFoundError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 0
    tune_allocator()  # glibc's mmap/trim thresholds: page zeroing doubled CPU training steps (runtime.py)
    try:
        return args.run(args) or 0
    except USER_ERRORS as error:
        print(f"hybridlm {args.verb}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hybridlm {args.verb}: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hybridlm", description="Build, train, measure and run hybrid Attention x SSM language models."
    )
    subparsers = parser.add_subparsers(title="verbs", metavar="VERB")
    for name in VERBS:
        module = importlib.import_module(f".{name}", __name__)
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run, verb=name)
    return parser
