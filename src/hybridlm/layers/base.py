"""The mixer contract: what one family of sub-layers (one or more pattern characters) provides.

Glossary: B batch, N tokens, d model width.

A family is one `Mixer` subclass in one file, registered once (`layers.FAMILIES`, or
`hybridlm.register_mixer` from user code). Its class attributes say what the pattern, the config and
the model need to know; its methods are the only place its internals are read:

    chars            {pattern character: sub-layer name}, e.g. {"A": "attention", "L": "local_attention"}
    Config           its typed options (a dataclass in the same file, section `config_name` of
                     ModelConfig), with `validate(model_config, chars)` and its derived sizes
    role             "mixer" (mixes along the sequence: a layer) or "ffn" (per token)
    attention_chars  which of `chars` count as attention in the ratio r
    pre_norm         False: the mixer norms its own input (the model gives it the raw stream)
    feeds_next_mixer True: its output goes into the next mixer's input, not the residual stream

    from_config(config, char, ordinal)  -> the module of the ordinal-th `char` of the pattern
    forward(x, state, ctx)              x (B, N, d) -> (B, N, d); state None: no cache, else in place
    allocate_state(batch, max_len, device, dtype) -> its typed state (cache.State) or None
    flops(seq_len)                      -> Flops: dense per token, mixing of a prefill and of a decode step
    cache_bytes(seq_len, batch, dtype_bytes) -> CacheBytes: what allocate_state holds after N tokens
    mixing_operators(x, ctx)            -> the y = M x operators of its sequence mixing (mixing.py)
    decay_rates(x, ctx)                 -> Decay (per-token decay of each state element) or None

Optional: `shared_modules(config)` (weights the model holds once, as `shared_attribute`, e.g.
Zamba's shared blocks; sub-layers find them in `ctx.shared`), `inner_chars(config)` (the blend's parts),
`active_parameters()` (MoE: the experts a token uses), `note()` (inspect's table), and
`describe_options(config)` (the presets table). Parameters that weight decay must skip are tagged
on the parameter itself with `no_weight_decay(p)` (as mamba_ssm and fla do).
A hook a family does not define raises `MissingHookError` naming it; none answers 0 silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..errors import ConfigError, MissingHookError

HOOKS = ("from_config", "allocate_state", "forward", "flops", "cache_bytes", "mixing_operators", "decay_rates")
NO_WEIGHT_DECAY = "_no_weight_decay"  # the attribute mamba_ssm and fla set on such parameters
POSITION_BYTES = 8  # int64 position of each KV slot, per batch row (cache.KVCache.positions)
FP32_BYTES = 4
COMPLEX64_BYTES = 8


@dataclass
class Flops:
    """Forward FLOPs of one sub-layer (a multiply-add is 2, as torch.utils.flop_counter counts)."""

    dense: int  # weight matmuls and depthwise convolutions, per token
    mixing_prefill: float = 0.0  # the work along the sequence, summed over a prefill of N tokens
    mixing_decode: float = 0.0  # the same for the N-th token alone

    def __add__(self, other: Flops) -> Flops:
        return Flops(
            self.dense + other.dense,
            self.mixing_prefill + other.mixing_prefill,
            self.mixing_decode + other.mixing_decode,
        )


@dataclass
class CacheBytes:
    """Bytes one sub-layer's state holds after a prefill of N tokens, and two published conventions."""

    kv: int = 0  # keys and values
    slots: int = 0  # the position of every KV slot (our cache's bookkeeping)
    state: int = 0  # conv windows and SSM / recurrence / modal states
    paper_kv: int = 0  # 2 * min(N, w) * n_kv_heads * head_dim values (the Jamba paper's Table 1)
    simplified: int = 0  # the seed's example: 2 * N * d values per attention layer, d per SSM layer

    @property
    def total(self) -> int:
        return self.kv + self.slots + self.state

    def __add__(self, other: CacheBytes) -> CacheBytes:
        return CacheBytes(*(getattr(self, name) + getattr(other, name) for name in self.__dataclass_fields__))


@dataclass
class Decay:
    """Mean per-token decay rate (-log decay) of every state element of a mixer, on one input."""

    unit: str  # what one rate belongs to: "channel", "head", "channel x state", ...
    rates: torch.Tensor  # (K,) float64
    kind: str  # the family name that owns the state ("mamba"; "blend:" prefixed inside the blend)


class Mixer(nn.Module):
    """Base class of every sub-layer family; see the module docstring for the contract."""

    chars: ClassVar[dict[str, str]] = {}
    config_name: ClassVar[str | None] = None
    Config: ClassVar[type | None] = None
    role: ClassVar[str] = "mixer"
    attention_chars: ClassVar[str] = ""
    pre_norm: ClassVar[bool] = True
    feeds_next_mixer: ClassVar[bool] = False
    shared_attribute: ClassVar[str | None] = None  # the model attribute holding `shared_modules`

    @classmethod
    def from_config(cls, config, char: str, ordinal: int = 0) -> Mixer:
        raise missing_hook(cls, "from_config")

    @classmethod
    def shared_modules(cls, config) -> nn.Module | None:
        """Weights every sub-layer of this family shares, held (and counted) once by the model."""
        return None

    @classmethod
    def inner_chars(cls, config) -> str:
        """Characters of the sub-layers this one builds inside itself (the blend's two parts)."""
        return ""

    @classmethod
    def describe_options(cls, config) -> str:
        """A few words on this family's options for the presets table ('' when none)."""
        return ""

    def allocate_state(self, batch_size: int, max_len: int | None, device, dtype):
        raise missing_hook(type(self), "allocate_state")

    def forward(self, x: torch.Tensor, state, ctx) -> torch.Tensor:
        raise missing_hook(type(self), "forward")

    def flops(self, seq_len: int) -> Flops:
        raise missing_hook(type(self), "flops")

    def cache_bytes(self, seq_len: int, batch: int, dtype_bytes: int) -> CacheBytes:
        raise missing_hook(type(self), "cache_bytes")

    def mixing_operators(self, x: torch.Tensor, ctx) -> list:
        raise missing_hook(type(self), "mixing_operators")

    def decay_rates(self, x: torch.Tensor, ctx) -> Decay | None:
        raise missing_hook(type(self), "decay_rates")

    def active_parameters(self) -> int:
        """Parameters one token uses (all of them, except in a mixture of experts)."""
        return sum(p.numel() for p in self.parameters())

    def note(self) -> str:
        """A short remark for `hybridlm inspect`'s table ('' when none)."""
        return ""


def missing_hook(cls: type, hook: str) -> MissingHookError:
    return MissingHookError(
        f"mixer {cls.__name__} ({', '.join(cls.chars) or 'no character'}) does not implement the hook "
        f"{hook!r}: see docs/adding-a-mixer.md"
    )


def missing_hooks(cls: type) -> list[str]:
    """The contract's hooks `cls` leaves to the base class (which raises)."""
    return [hook for hook in HOOKS if getattr(cls, hook) is getattr(Mixer, hook)]


def no_weight_decay(*parameters: nn.Parameter) -> None:
    """Tag parameters the optimizer must not decay (SSM decays, skips, poles, gates' logits)."""
    for parameter in parameters:
        setattr(parameter, NO_WEIGHT_DECAY, True)


def linear_flops(module: nn.Linear) -> int:
    """2 * in * out: one multiply-add per weight, per token."""
    return 2 * module.in_features * module.out_features


def conv_flops(conv) -> int:
    """A depthwise causal conv (layers/conv.py): 2 * channels * k per token."""
    return 2 * conv.weight.shape[0] * conv.kernel_size


def conv_state_bytes(conv, batch: int, dtype_bytes: int) -> int:
    """The k - 1 last inputs a conv keeps, in the activation dtype."""
    return batch * conv.weight.shape[0] * (conv.kernel_size - 1) * dtype_bytes


def require(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless `condition`: one line, naming the field and its allowed range."""
    if not condition:
        raise ConfigError(message)


def check_positive(section, prefix: str, names: tuple[str, ...]) -> None:
    """Each named field is >= 1 when it is an integer (None allowed: a derived default), finite and > 0 when a float."""
    for name in names:
        value = getattr(section, name)
        if value is None:
            continue
        label = f"{prefix}{name}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{label}={value!r} must be a number")
        if isinstance(value, int):
            require(value >= 1, f"{label}={value} must be an integer >= 1")
        else:
            require(math.isfinite(value) and value > 0, f"{label}={value} must be finite and > 0")


class TokenwiseMixer(Mixer):
    """A sub-layer that acts on each token alone (the FFNs): no state, no mixing along the sequence."""

    def cache_bytes(self, seq_len: int, batch: int, dtype_bytes: int) -> CacheBytes:
        return CacheBytes()

    def mixing_operators(self, x, ctx) -> list:
        return []

    def decay_rates(self, x, ctx) -> None:
        return None
