"""`ModelConfig`: what a model is. Top-level sizes plus one typed sub-config per mixer family.

Options of one family live in its sub-config and are addressed by dotted keys (`mamba.d_state=8`)
in overrides and on the command line. Every switch Hugging Face checkpoints need to be matched
(norm variant, biases, activations, attention scale, partial RoPE, soft-cap, embedding scale,
multi-head Mamba-1, block-diagonal gates, dt clamp) is a field here, never a code fork.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .mixer_configs import (
    SUBCONFIGS,
    AttentionConfig,
    BlendConfig,
    HyenaConfig,
    Mamba2Config,
    MambaConfig,
    MLPConfig,
    MoEConfig,
    RGLRUConfig,
    SharedConfig,
)
from .pattern import SUBLAYER_NAMES, layer_chars

DTYPE_NAMES = ("float32", "bfloat16", "float16")  # activation dtypes for running, converting and costing


class ConfigError(ValueError):
    """An invalid configuration value or an unknown field (the message names the nearest valid one)."""


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
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    mamba: MambaConfig = field(default_factory=MambaConfig)
    mamba2: Mamba2Config = field(default_factory=Mamba2Config)
    rglru: RGLRUConfig = field(default_factory=RGLRUConfig)
    hyena: HyenaConfig = field(default_factory=HyenaConfig)
    blend: BlendConfig = field(default_factory=BlendConfig)
    mlp: MLPConfig = field(default_factory=MLPConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)
    shared: SharedConfig = field(default_factory=SharedConfig)

    def __post_init__(self) -> None:
        for name, cls in SUBCONFIGS.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, _build(cls, value, prefix=f"{name}."))
        self.validate()

    # ---- derived sizes -------------------------------------------------------------------------
    @property
    def chars(self) -> str:
        """The expanded pattern, one character per sub-layer."""
        return layer_chars(self.pattern)

    @property
    def layer_types(self) -> list[str]:
        return [SUBLAYER_NAMES[c] for c in self.chars]

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.attention.head_dim or self.d_model // self.n_heads

    @property
    def d_ff(self) -> int:
        if self.mlp.d_ff:
            return self.mlp.d_ff
        if self.mlp.gated:
            return 8 * math.ceil(8 * self.d_model / 3 / 8)
        return 4 * self.d_model

    @property
    def rnn_width(self) -> int:
        heads = self.rglru.n_heads or self.n_heads
        return self.rglru.width or heads * math.ceil(round(4 * self.d_model / 3) / heads)

    @property
    def shared_heads(self) -> int:
        return self.shared.n_heads or self.n_heads

    @property
    def shared_kv_heads(self) -> int:
        return self.shared.n_kv_heads or self.shared_heads

    @property
    def shared_head_dim(self) -> int:
        """The shared block attends over concat(x, embeddings): 2 * d_model split over its heads."""
        return 2 * self.d_model // self.shared_heads

    @property
    def dt_rank(self) -> int:
        return self.mamba.dt_rank or math.ceil(self.d_model / 16)

    # ---- validation ------------------------------------------------------------------------------
    def validate(self) -> None:
        chars = self.chars  # raises PatternError with the column
        if self.d_model <= 0 or self.vocab_size <= 0 or self.n_heads <= 0:
            raise ConfigError("d_model, vocab_size and n_heads must be positive")
        if self.n_heads % self.kv_heads:
            raise ConfigError(f"n_kv_heads={self.kv_heads} must divide n_heads={self.n_heads}")
        if self.attention.head_dim is None and self.d_model % self.n_heads:
            raise ConfigError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; set attention.head_dim"
            )
        if not 0.0 < self.attention.rope_fraction <= 1.0:
            raise ConfigError("attention.rope_fraction must be in (0, 1]")
        if self.attention.window < 1:
            raise ConfigError("attention.window must be >= 1")
        if "E" in chars and not 1 <= self.moe.top_k <= self.moe.n_experts:
            raise ConfigError(f"moe.top_k={self.moe.top_k} must be in [1, moe.n_experts={self.moe.n_experts}]")
        d_inner2 = self.mamba2.expand * self.d_model
        if "D" in chars or self.blend.ssm == "D":
            if d_inner2 % self.mamba2.head_dim:
                raise ConfigError(f"mamba2.expand * d_model = {d_inner2} is not divisible by mamba2.head_dim")
            if (d_inner2 // self.mamba2.head_dim) % self.mamba2.n_groups:
                raise ConfigError("mamba2.n_groups must divide the number of Mamba-2 heads")
        if (self.mamba.expand * self.d_model) % self.mamba.n_heads:
            raise ConfigError("mamba.n_heads must divide mamba.expand * d_model")
        if self.rnn_width % (self.rglru.n_heads or self.n_heads):
            raise ConfigError("rglru.n_heads must divide rglru.width")
        if self.blend.ssm not in "MDRH" or len(self.blend.ssm) != 1:
            raise ConfigError(f"blend.ssm must be one of M D R H, got {self.blend.ssm!r}")
        if self.blend.attn not in "AL" or len(self.blend.attn) != 1:
            raise ConfigError(f"blend.attn must be A or L, got {self.blend.attn!r}")
        for name in ("mlp", "shared", "rglru"):
            activation = getattr(self, name).activation
            if activation not in ACTIVATIONS:
                raise ConfigError(f"{name}.activation={activation!r}: choose one of {', '.join(ACTIVATIONS)}")
        if "S" in chars and (2 * self.d_model % self.shared_heads or self.shared_heads % self.shared_kv_heads):
            raise ConfigError(
                f"shared block: its {self.shared_heads} heads must divide 2 * d_model = {2 * self.d_model} and "
                f"shared.n_kv_heads = {self.shared_kv_heads} must divide them"
            )
        if self.shared.lora_rank < 0 or self.shared.n_blocks < 1:
            raise ConfigError("shared.n_blocks must be >= 1 and shared.lora_rank >= 0")

    # ---- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        data = {"model_type": "hybridlm"}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            data[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        # strict JSON has no Infinity: an unbounded clamp is written as the string "inf"
        data["mamba2"]["dt_limit"] = [bound if math.isfinite(bound) else str(bound) for bound in self.mamba2.dt_limit]
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
        from .presets import preset_config

        return preset_config(name, size, overrides)

    def with_overrides(self, overrides: dict) -> ModelConfig:
        """A copy with dotted (`mamba.d_state`) or nested (`mamba={...}`) overrides applied."""
        data = self.to_dict()
        data.pop("layer_types")
        for key, value in overrides.items():
            if isinstance(value, dict) and key in SUBCONFIGS:
                for sub_key, sub_value in value.items():
                    _set_dotted(data, f"{key}.{sub_key}", sub_value)
            else:
                _set_dotted(data, key, value)
        return ModelConfig.from_dict(data)


ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu")


def parse_override(text: str) -> tuple[str, str]:
    """Split a command-line `key=value` override."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. mamba.d_state=8")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def _set_dotted(data: dict, key: str, value) -> None:
    head, _, tail = key.partition(".")
    if tail:
        if head not in SUBCONFIGS:
            raise ConfigError(f"unknown config section {head!r}{nearest(head, SUBCONFIGS)}")
        names = [f.name for f in dataclasses.fields(SUBCONFIGS[head])]
        if tail not in names:
            raise ConfigError(f"unknown field '{key}'{nearest(tail, names, prefix=head + '.')}")
        data[head][tail] = _coerce(SUBCONFIGS[head], tail, value)
    else:
        names = [f.name for f in dataclasses.fields(ModelConfig)]
        if head not in names:
            raise ConfigError(f"unknown field {head!r}{nearest(head, names + list(SUBCONFIGS))}")
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
        if typing.get_origin(hint) is tuple:
            return tuple(float(part) for part in value.strip("()[]").split(","))
    except ValueError:
        raise ConfigError(f"{cls.__name__}.{name}: cannot read {value!r} as {hint}") from None
    return value


def _build(cls, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(f"unknown field '{prefix}{key}'{nearest(key, names, prefix=prefix)}")
    kwargs = dict(data)
    if cls is Mamba2Config and "dt_limit" in kwargs:
        kwargs["dt_limit"] = tuple(float(v) for v in kwargs["dt_limit"])
    if cls is ModelConfig:
        for name, sub in SUBCONFIGS.items():
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
