"""What every synthetic task shares: the batch it returns, its random stream, and the checks of its
settings (one-line ConfigErrors naming the task's own fields and their allowed ranges).

Glossary: B batch, L sequence length.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field

import torch

from ..config import ConfigError, nearest

IGNORE = -100
NO_SOURCE = -1
_UnionType = type(int | None)  # the class of `X | None` annotations


@dataclass(frozen=True)
class Batch:
    inputs: torch.Tensor  # (B, L) token ids
    targets: torch.Tensor  # (B, L) next-token answers, IGNORE where none is asked
    # (B, L) position of the context token each answer copies, NO_SOURCE where none (r_T uses it)
    sources: torch.Tensor | None = None
    # name -> (B, L) integer per answer (e.g. "gap": answer position minus source position,
    # "depth": needle depth in percent); evaluation reports accuracy per bucket of each
    buckets: dict[str, torch.Tensor] = field(default_factory=dict)


def batch_generator(seed: int, index: int, split: str) -> torch.Generator:
    """The random stream of one batch: distinct for every (seed, index) and for train vs test."""
    stream = {"train": 0, "test": 1}[split]
    return torch.Generator().manual_seed((seed * 1_000_003 + index) * 2 + stream)


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def in_range(task: str, name: str, value, low, high=None) -> None:
    """ConfigError unless low <= value (<= high): 'mqar: n_pairs = 0 is out of range; allowed 1..16'."""
    if value < low or (high is not None and value > high):
        allowed = f"{low}..{high}" if high is not None else f">= {low}"
        raise ConfigError(f"{task}: {name} = {value} is out of range; allowed {allowed}")


def build_task(name: str, cls, settings: dict):
    """cls(**settings) after checking each setting is one of the task's fields, of its type."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key, value in settings.items():
        if key not in fields:
            hint = nearest(key, fields)
            raise ConfigError(f"task {name} has no setting {key!r}{hint} (settings: {', '.join(fields)})")
        expected = hints[key]
        if not _fits(value, expected):
            raise ConfigError(f"task {name}: {key} must be {_type_name(expected)}, got {value!r}")
    return cls(**settings)


def _fits(value, expected) -> bool:
    options = typing.get_args(expected) if typing.get_origin(expected) in (typing.Union, _UnionType) else (expected,)
    for option in options:
        if option is type(None) and value is None:
            return True
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
    return False


def _type_name(expected) -> str:
    options = typing.get_args(expected) or (expected,)
    return " or ".join("none" if option is type(None) else option.__name__ for option in options)
