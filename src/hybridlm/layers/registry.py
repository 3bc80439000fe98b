"""The one list of mixer families, and the character table derived from it.

`FAMILIES` holds every registered `Mixer` subclass (the built-in ones are registered by
layers/__init__.py, users' by `hybridlm.register_mixer`); `MIXERS` maps each pattern character to its
family. Everything else (pattern characters and names, config sections, CLI listings, analyses)
reads these two.
"""

from __future__ import annotations

import dataclasses

from ..errors import ConfigError
from .base import HOOKS, Mixer, missing_hooks

FAMILIES: list[type[Mixer]] = []
MIXERS: dict[str, type[Mixer]] = {}
PATTERN_SYNTAX = "()*0123456789"  # characters of the pattern language itself


def register(family: type[Mixer]) -> type[Mixer]:
    """Add a family; its characters and config section must be new. Returns the class (a decorator)."""
    if not (isinstance(family, type) and issubclass(family, Mixer)):
        raise ConfigError(f"{family!r} is not a subclass of hybridlm.layers.base.Mixer")
    if family in FAMILIES:
        return family
    if not family.chars:
        raise ConfigError(f"mixer {family.__name__} declares no pattern character (class attribute `chars`)")
    for char, name in family.chars.items():
        if len(char) != 1 or char.isspace() or char in PATTERN_SYNTAX:
            raise ConfigError(f"mixer {family.__name__}: {char!r} cannot be a pattern character")
        if char in MIXERS:
            raise ConfigError(f"mixer {family.__name__}: character {char!r} already belongs to {MIXERS[char].__name__}")
        if name in sublayer_names().values():
            raise ConfigError(f"mixer {family.__name__}: sub-layer name {name!r} is taken")
    if family.role not in ("mixer", "ffn"):
        raise ConfigError(f"mixer {family.__name__}: role must be 'mixer' or 'ffn', got {family.role!r}")
    if (family.config_name is None) != (family.Config is None):
        raise ConfigError(f"mixer {family.__name__}: give both `config_name` and `Config`, or neither")
    if family.Config is not None:
        if not dataclasses.is_dataclass(family.Config):
            raise ConfigError(f"mixer {family.__name__}: Config must be a dataclass")
        if not callable(getattr(family.Config, "validate", None)):  # every ModelConfig calls it
            raise ConfigError(f"mixer {family.__name__}: Config needs validate(self, model_config, chars)")
        if family.config_name in sections():
            raise ConfigError(f"mixer {family.__name__}: config section {family.config_name!r} is taken")
    core = [hook for hook in missing_hooks(family) if hook in HOOKS[:3]]
    if core:
        raise ConfigError(f"mixer {family.__name__} does not implement {', '.join(core)}: see docs/adding-a-mixer.md")
    FAMILIES.append(family)
    MIXERS.update(dict.fromkeys(family.chars, family))
    return family


def sublayer_names() -> dict[str, str]:
    """{pattern character: sub-layer name} of every registered family, in registration order."""
    return {char: name for family in FAMILIES for char, name in family.chars.items()}


def sections() -> dict[str, type]:
    """{config section: its dataclass} of every family that has options."""
    return {family.config_name: family.Config for family in FAMILIES if family.Config is not None}


def mixer_chars() -> frozenset[str]:
    """Characters of sequence mixers (the layers); the rest are per-token FFNs."""
    return frozenset(char for char, family in MIXERS.items() if family.role == "mixer")


def attention_chars() -> frozenset[str]:
    """Characters that count as attention in the attention ratio r."""
    return frozenset(char for family in FAMILIES for char in family.attention_chars)


def feeding_chars() -> frozenset[str]:
    """Characters whose output feeds the next mixer's input (the shared block): a mixer must follow."""
    return frozenset(char for char, family in MIXERS.items() if family.feeds_next_mixer)
