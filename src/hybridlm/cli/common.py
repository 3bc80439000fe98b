"""Pieces the verbs share: model flags, resolving a target to a config, plain-text tables."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import ModelConfig, nearest, parse_override
from ..pattern import PatternError, format_pattern
from ..presets import SIZES, preset_config, presets
from ..tables import format_table as format_table  # re-exported: cli modules import it from here


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", choices=SIZES, default="small", help="preset size (default: small)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, repeatable, e.g. --set mamba.d_state=8",
    )


def resolve_config(target: str, size: str = "small", overrides: list[str] | None = None) -> ModelConfig:
    """A directory wins, then a preset name, then a layer pattern with the preset dimensions of `size`."""
    from ..checkpoint import load_config

    if Path(target).is_dir():
        return load_config(target).with_overrides(_parsed(overrides))
    if target not in presets():
        try:
            format_pattern(target)
        except PatternError as error:
            hint = nearest(target, presets()) or f"; presets: {', '.join(presets())}"
            raise PatternError(
                f"{target!r} is not a checkpoint directory, a preset or a valid pattern{hint} (as a pattern: {error})"
            ) from None
        return preset_config("transformer", size, {"pattern": target, **_parsed(overrides)})
    return preset_config(target, size, _parsed(overrides))


def _parsed(overrides: list[str] | None) -> dict:
    return dict(parse_override(item) for item in overrides or [])


def human(count: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.2f}{unit}"
    return str(count)


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
