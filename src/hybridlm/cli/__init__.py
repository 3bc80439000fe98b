"""The `hybridlm` command line. Only this package prints and exits; the library returns values.

One module per verb, each with `HELP`, `add_arguments(parser)` and `run(args)`; adding a verb is
one file plus one entry in `VERBS`. Errors a user can cause (a bad flag included) end with one line
on stderr and exit 2; a training run stopped by a non-finite loss or gradient exits 3; a closed
stdout (`| head`) ends quietly. Under torchrun a usage error or a divergence (the same on every rank) is
printed by rank 0 alone; any other error by every rank that meets it, after rank 0 as `[rank N] ...`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..checkpoint import CheckpointError
from ..config import ConfigError, nearest
from ..pattern import PatternError
from ..runtime import tune_allocator
from ..train import TrainingDiverged

VERBS = [
    "presets",
    "inspect",
    "analyze",
    "train",
    "eval",
    "sweep",
    "generate",
    "convert",
    "tokenize",
    "bench",
    "demo",
    "serve",
    "context",
]
USER_ERRORS = (ConfigError, PatternError, CheckpointError, FileNotFoundError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        return _unknown_flags(parser, args, unknown)
    if not getattr(args, "run", None):
        parser.print_help()
        return 0
    tune_allocator()  # glibc's mmap/trim thresholds: page zeroing doubled CPU training steps (runtime.py)
    try:
        return args.run(args) or 0
    except USER_ERRORS as error:
        if isinstance(error, OSError) and error.filename:  # "PATH: No such file or directory", not "[Errno 2] ..."
            error = f"{error.filename}: {error.strerror}"
        _say(f"hybridlm {args.verb}: error: {error}", every_rank=True)  # a path may be missing on one node only
        return 2
    except TrainingDiverged as error:  # all-reduced: every rank stops at the same step
        _say(f"hybridlm {args.verb}: stopped: {error}")
        return 3
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"hybridlm {args.verb}: interrupted", file=sys.stderr)
        return 130


def _say(line: str, every_rank: bool = False) -> None:
    """One line on stderr: under torchrun from rank 0, or with `every_rank` from every rank, the others
    naming themselves."""
    rank = os.environ.get("RANK", "0")
    if rank == "0":
        print(line, file=sys.stderr)
    elif every_rank:
        print(f"[rank {rank}] {line}", file=sys.stderr)


def _unknown_flags(parser: argparse.ArgumentParser, args, unknown: list[str]) -> int:
    """One line naming the first unknown argument and, for a flag, the verb's nearest one."""
    verb = getattr(args, "verb", None)
    flags = [option for action in parser.verbs[verb]._actions for option in action.option_strings] if verb else []
    first = unknown[0].split("=", 1)[0]
    hint = nearest(first, flags).replace("; did you mean", ": did you mean") if first.startswith("-") else ""
    _say(f"hybridlm{' ' + verb if verb else ''}: error: unknown argument {first}{hint}")
    return 2


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (exit 2) instead of the usage block."""

    def error(self, message: str):
        _say(f"{self.prog}: error: {message} (see {self.prog} --help)")
        self.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="hybridlm", description="Build, train, measure and run hybrid Attention x SSM language models."
    )
    subparsers = parser.add_subparsers(title="verbs", metavar="VERB", parser_class=OneLineParser)
    parser.verbs = {}
    for name in VERBS:
        module = importlib.import_module(f".{name}", __name__)
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run, verb=name)
        parser.verbs[name] = sub
    return parser
