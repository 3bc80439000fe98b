"""`ModelConfig`: what a model is. Top-level sizes plus one typed section per mixer family.

The sections are not written here: each family defines its options (a dataclass with its own
validation and derived sizes) in its own file, and `ModelConfig` gets one field per registered
family (`add_section`; `hybridlm.register_mixer` calls it for users' families). Options are
addressed by dotted keys (`mamba.d_state=8`) in overrides and on the command line. Every switch
Hugging Face checkpoints need to be matched is a field, never a code fork.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .layers.registry import MIXERS, sections
from .pattern import layer_chars
from .preset_table import preset_fields

__all__ = ["DTYPE_NAMES", "ConfigError", "ModelConfig", "add_section", "nearest", "parse_override"]
DTYPE_NAMES = ("float32", "bfloat16", "float16")  # activation dtypes for running, converting and costing


@dataclass
class ModelConfig:
    """A hybrid language model: embedding -> sub-layers from `pattern` -> final norm -> LM head."""

    pattern: str = "(AF)*2"
    d_model: int = 256
    vocab_size: int = 256
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: n_heads (MHA)
    norm_eps: float = 1e-5
    norm_offset: bool = False  # RMSNorm weight as (1 + w) (Gemma / RecurrentGemma)
    tie_embeddings: bool = True
    embedding_scale: float | None = None  # multiply embeddings (RecurrentGemma: sqrt(d_model))
    embedding_scale_bf16: bool = False  # round that scale to bf16 first, as RecurrentGemma does
    logit_softcap: float | None = None  # logits = c * tanh(logits / c)
    init_std: float = 0.02
    # one field per family's section follows (add_section): attention, shared, mamba, ...

    def __post_init__(self) -> None:
        for name, cls in sections().items():
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, _build(cls, value, prefix=f"{name}."))
        self.validate()

    # ---- derived sizes (the families' own are methods of their sections) ---------------------------
    @property
    def chars(self) -> str:
        """The expanded pattern, one character per sub-layer."""
        return layer_chars(self.pattern)

    @property
    def used_chars(self) -> str:
        """The expanded pattern plus the characters of sub-layers built inside others (the blend's parts)."""
        chars = self.chars
        inner = "".join(MIXERS[char].inner_chars(self) for char in dict.fromkeys(chars))
        return chars + inner

    @property
    def layer_types(self) -> list[str]:
        return [MIXERS[c].chars[c] for c in self.chars]

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    # ---- validation ------------------------------------------------------------------------------
    def validate(self) -> None:
        """Top-level values, then every section's own checks; the first failure raises one line."""
        chars = self.used_chars  # raises PatternError with the column
        for name in ("d_model", "vocab_size", "n_heads", "n_kv_heads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name}={value!r} must be an integer >= 1")
        for name in ("norm_eps", "init_std", "embedding_scale", "logit_softcap"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name}={value!r} must be finite and > 0")
        if self.n_heads % self.kv_heads:
            raise ConfigError(f"n_kv_heads={self.kv_heads} must divide n_heads={self.n_heads}")
        for name in sections():
            getattr(self, name).validate(self, chars)

    # ---- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        data = {"model_type": "hybridlm"}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in PLUGIN_SECTIONS and value == PLUGIN_SECTIONS[f.name]():
                continue  # a plugin family's untouched options: a process that never registered it can load this
            data[f.name] = _json_safe(dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value)
        data["layer_types"] = self.layer_types
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        data = dict(data)
        model_type = data.pop("model_type", "hybridlm")
        if model_type != "hybridlm":
            raise ConfigError(
                f"model_type {model_type!r} is not a hybridlm config (use `hybridlm convert` for HF models)"
            )
        layer_types = data.pop("layer_types", None)
        config = _build(cls, data, prefix="")
        if layer_types is not None and list(layer_types) != config.layer_types:
            raise ConfigError(
                "config.json: layer_types does not match the expansion of pattern (the pattern is authoritative)"
            )
        return config

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> ModelConfig:
        """Parse JSON text, or read it from a path (a `Path`, or a string that does not start with '{')."""
        is_text = isinstance(text_or_path, str) and text_or_path.lstrip().startswith("{")
        text = text_or_path if is_text else Path(text_or_path).read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"config is not valid JSON: {error}") from None
        return cls.from_dict(data)

    @classmethod
    def from_preset(cls, name: str, size: str = "small", **overrides) -> ModelConfig:
        """A preset (preset_table.py) at `size`, with dotted or nested `overrides` applied."""
        config = cls.from_dict(preset_fields(name, size)).with_overrides(overrides)
        if config.embedding_scale_bf16 and "embedding_scale" not in overrides:
            # RecurrentGemma scales embeddings by sqrt(d_model) (rounded to bf16): follow an overridden width
            config.embedding_scale = config.d_model**0.5
        return config

    def with_overrides(self, overrides: dict) -> ModelConfig:
        """A copy with dotted (`mamba.d_state`) or nested (`mamba={...}`) overrides applied."""
        data = self.to_dict()
        data.pop("layer_types")
        for key, value in overrides.items():
            if isinstance(value, dict) and key in sections():
                for sub_key, sub_value in value.items():
                    _set_dotted(data, f"{key}.{sub_key}", sub_value)
            else:
                _set_dotted(data, key, value)
        return ModelConfig.from_dict(data)


PLUGIN_SECTIONS: dict[str, type] = {}  # sections of the families users registered (register_mixer)


def add_section(name: str, cls: type) -> None:
    """Give ModelConfig a field `name` holding a `cls` (a family's options), default `cls()`.

    The dataclass is re-derived in place, so every import of ModelConfig sees the new field."""
    if name in ModelConfig.__dataclass_fields__:
        return
    for existing in dataclasses.fields(ModelConfig):  # dataclass() removed these class attributes
        if existing.default_factory is not dataclasses.MISSING:
            setattr(ModelConfig, existing.name, field(default_factory=existing.default_factory))
    ModelConfig.__annotations__[name] = cls
    setattr(ModelConfig, name, field(default_factory=cls))
    for generated in ("__init__", "__repr__", "__eq__", "__match_args__"):
        if generated in ModelConfig.__dict__:
            delattr(ModelConfig, generated)
    dataclass(ModelConfig)


for _name, _cls in sections().items():
    add_section(_name, _cls)


def parse_override(text: str) -> tuple[str, str]:
    """Split a command-line `key=value` override."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. mamba.d_state=8")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def _json_safe(value):
    """Strict JSON has no Infinity or NaN: such floats are written as strings ("inf")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def _set_dotted(data: dict, key: str, value) -> None:
    head, _, tail = key.partition(".")
    known = sections()
    if tail:
        if head not in known:
            raise ConfigError(f"unknown config section {head!r}{nearest(head, known)}")
        names = [f.name for f in dataclasses.fields(known[head])]
        if tail not in names:
            raise ConfigError(f"unknown field '{key}'{nearest(tail, names, prefix=head + '.')}")
        data.setdefault(head, {})[tail] = _coerce(known[head], tail, value)
    else:
        names = [f.name for f in dataclasses.fields(ModelConfig)]
        if head not in names:
            raise ConfigError(f"unknown field {head!r}{nearest(head, names + list(known))}")
        data[head] = _coerce(ModelConfig, head, value)


def _coerce(cls, name: str, value):
    """Turn a command-line string into the field's type; other values pass through."""
    if not isinstance(value, str):
        return value
    hint = typing.get_type_hints(cls)[name]
    args = set(typing.get_args(hint)) or {hint}
    if value.lower() in ("none", "null") and type(None) in args:
        return None
    try:
        if typing.get_origin(hint) is tuple:
            return tuple(float(part) for part in value.strip("()[]").split(","))
        if bool in args:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if int in args:
            return int(value)
        if float in args:
            return float(value)
    except ValueError:
        raise ConfigError(f"{cls.__name__}.{name}: cannot read {value!r} as {hint}") from None
    return value


def _build(cls, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key in names:
            continue
        if cls is ModelConfig and isinstance(data[key], dict):  # a section of a family not registered here
            raise ConfigError(
                f"unknown config section {key!r}: no registered mixer has it (register a plugin's family, "
                f"by importing its module, before building or loading the config){nearest(key, names)}"
            )
        raise ConfigError(f"unknown field '{prefix}{key}'{nearest(key, names, prefix=prefix)}")
    kwargs = dict(data)
    if cls is ModelConfig:
        for name, sub in sections().items():
            if name in kwargs:
                kwargs[name] = _build(sub, kwargs[name], prefix=f"{name}.")
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise ConfigError(f"{cls.__name__}: {error}") from None


def nearest(name: str, candidates, prefix: str = "") -> str:
    """ "; did you mean 'x'?" for the closest candidate, or "" when none is close."""
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return f"; did you mean '{prefix}{match[0]}'?" if match else ""
