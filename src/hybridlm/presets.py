"""Named architectures at three sizes (the table is preset_table.py): `preset_config` builds one."""

from __future__ import annotations

from .config import ModelConfig
from .preset_table import BYTE_VOCAB, PRESETS, SIZES, preset_description, presets

__all__ = ["BYTE_VOCAB", "PRESETS", "SIZES", "preset_config", "preset_description", "presets"]


def preset_config(name: str, size: str = "small", overrides: dict | None = None) -> ModelConfig:
    """The preset's config at `size` with dotted or nested `overrides` applied."""
    return ModelConfig.from_preset(name, size, **(overrides or {}))
