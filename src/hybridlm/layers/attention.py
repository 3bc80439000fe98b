"""Causal multi-head attention with grouped-query heads, RoPE and an optional sliding window.

Glossary: B batch, N new tokens, T keys attended (cache + new), H query heads, H_kv key/value
heads (H_kv divides H), D head dim, d_in / d_out model widths (the shared Zamba block reads 2d).

    y = softmax(Q K^T * scale + mask) V          (Vaswani et al. 2017, eq. 1)

The mask allows key s for query t when pos_s <= pos_t and pos_t - pos_s < window (the window counts
the query itself, Griffin's local attention), and never a padding key. Positions are per row, so
left-padded prompts behave as if unpadded.

Optional `short_conv` (Primer's multi-dconv-head attention, So et al. 2021): a depthwise causal conv
of width k over q, k and v after projection. It hands attention the previous tokens, the step an
induction head otherwise needs a second layer for; recall tasks are learned much sooner with it
(the Zoology/Based recipe puts a short conv before every attention layer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..cache import EMPTY, KVCache, State
from ..ops.dispatch import fused_decode_applies
from ..ops.sliding_window import block_size, sliding_window_attention
from .base import (
    POSITION_BYTES,
    CacheBytes,
    Decay,
    Flops,
    Mixer,
    check_positive,
    conv_flops,
    conv_state_bytes,
    linear_flops,
    require,
)
from .context import Context
from .conv import CausalConv1d
from .mixing import MixingOperator
from .rope import RotaryEmbedding

SDPA_HAS_GQA = tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 5)  # enable_gqa


@dataclass
class AttentionConfig:
    """Causal GQA attention (`A`) and its sliding-window form (`L`)."""

    head_dim: int | None = None  # None: d_model // n_heads
    rope: bool = True
    rope_theta: float = 10000.0
    rope_fraction: float = 1.0  # partial RoPE: rotate the first fraction of head_dim (RecurrentGemma 0.5)
    window: int = 128  # `L`: the number of keys a query sees, itself included
    qkv_bias: bool = False
    out_bias: bool = False
    scale: float | None = None  # None: head_dim ** -0.5
    short_conv: int = 0  # depthwise causal conv of this width on q, k, v (Primer's MDHA); 0 = off

    def head_size(self, model) -> int:
        return self.head_dim or model.d_model // model.n_heads

    def validate(self, model, chars: str) -> None:
        check_positive(self, "attention.", ("head_dim", "rope_theta", "window", "scale"))
        require(
            self.head_dim is not None or model.d_model % model.n_heads == 0,
            f"d_model={model.d_model} is not divisible by n_heads={model.n_heads}; set attention.head_dim",
        )
        require(0.0 < self.rope_fraction <= 1.0, f"attention.rope_fraction={self.rope_fraction} must be in (0, 1]")
        require(self.short_conv >= 0, f"attention.short_conv={self.short_conv} must be >= 0 (0 = off)")


@dataclass
class ShortConvKVState(State):
    """Attention with a short conv on q, k, v: its keys and values, and the conv's last k - 1 inputs."""

    kv: KVCache
    conv: torch.Tensor  # (B, q + k + v channels, k - 1)


class Attention(Mixer):
    chars = {"A": "attention", "L": "local_attention"}
    config_name = "attention"
    Config = AttentionConfig
    attention_chars = "AL"

    def __init__(
        self,
        d_in: int,
        d_out: int,
        n_heads: int,
        n_kv_heads: int,
        head_dim: int,
        *,
        window: int | None = None,
        rope: bool = True,
        rope_theta: float = 10000.0,
        rope_fraction: float = 1.0,
        scale: float | None = None,
        qkv_bias: bool = False,
        out_bias: bool = False,
        short_conv: int = 0,
    ):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.window = window
        self.scale = scale if scale is not None else head_dim**-0.5
        self.q_proj = nn.Linear(d_in, n_heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(d_in, n_kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(d_in, n_kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(n_heads * head_dim, d_out, bias=out_bias)
        self.o_proj.residual_output = True
        self.rope = RotaryEmbedding(head_dim, rope_theta, rope_fraction) if rope else None
        qkv_width = (n_heads + 2 * n_kv_heads) * head_dim
        self.short_conv = CausalConv1d(qkv_width, short_conv, bias=False) if short_conv else None

    @classmethod
    def from_config(cls, config, char: str = "A", ordinal: int = 0) -> Attention:
        options = config.attention
        return cls(
            config.d_model,
            config.d_model,
            config.n_heads,
            config.kv_heads,
            options.head_size(config),
            window=options.window if char == "L" else None,
            rope=options.rope,
            rope_theta=options.rope_theta,
            rope_fraction=options.rope_fraction,
            scale=options.scale,
            qkv_bias=options.qkv_bias,
            out_bias=options.out_bias,
            short_conv=options.short_conv,
        )

    @classmethod
    def describe_options(cls, config) -> str:
        used = config.used_chars
        window = f"window={config.attention.window}" if "L" in used else ""
        return ", ".join(part for part in (window, "" if config.attention.rope else "no RoPE") if part)

    def note(self) -> str:
        return f", window {self.window}" if self.window is not None else ""

    def allocate_state(self, batch_size: int, max_len: int | None, device, dtype) -> KVCache | ShortConvKVState:
        """A KVCache; with a short conv, ShortConvKVState(kv=KVCache, conv=(B, q+k+v channels, k-1))."""
        kv = KVCache(
            batch_size, self.n_kv_heads, self.head_dim, window=self.window, max_len=max_len, device=device, dtype=dtype
        )
        if self.short_conv is None:
            return kv
        channels, width = self.short_conv.weight.shape[0], self.short_conv.kernel_size
        return ShortConvKVState(kv=kv, conv=torch.zeros(batch_size, channels, width - 1, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, state, ctx: Context, adapters=None) -> torch.Tensor:
        """x (B, N, d_in) -> (B, N, d_out). `adapters`: optional LoRA modules added to q, k, v (Zamba2)."""
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if adapters is not None:
            q, k, v = q + adapters[0](x), k + adapters[1](x), v + adapters[2](x)
        return self.attend(q, k, v, state, ctx)

    def decode_token(self, x: torch.Tensor, norm, state, ctx: Context) -> torch.Tensor | None:
        """Attention of norm(x) for one token x (B, 1, d_in): the norm and [q | k | v] as one GEMV in one
        fused call (ops/decode_cpu.py), then the cache write, attention and o_proj in another
        (ops/attention_decode_cpu.py) or, where a mask is needed, `attend`; None where it does not apply."""
        if state is None or self.short_conv is not None or not fused_decode_applies(x, self, norm):
            return None
        if self.rope is not None and self.rope.inv_freq.dtype != torch.float32:
            return None
        from ..ops import attention_decode_cpu, decode_cpu

        projections = (self.q_proj, self.k_proj, self.v_proj)
        weights = decode_cpu.cached_weights(self, lambda _: decode_cpu.projection_weights(norm, projections), norm)
        if weights is None:
            return None
        rope = None
        if self.rope is not None:  # rotated in the same call: queries and keys are the first H + H_kv heads
            rope = (ctx.positions, self.rope.inv_freq, self.head_dim, self.n_heads + self.n_kv_heads)
        qkv = decode_cpu.norm_project(x, weights, rope)
        if isinstance(state, KVCache) and ctx.valid is None:
            out = attention_decode_cpu.attend_token(self, qkv, state, ctx.positions)
            if out is not None:
                return out
        q, k, v = qkv.split([p.out_features for p in projections], dim=-1)
        return self.attend(q, k, v, state, ctx, rotated=True)

    def decode_program_step(self, norm, state, batch: int, shared: dict):
        """This sub-layer's step in a whole-step decode (ops/decode_program.py), or None: where
        `decode_token` fuses (a KV cache, no short conv); a cache slot that needs a mask is found per token."""
        if not isinstance(state, KVCache) or self.short_conv is not None:
            return None
        from ..ops import attention_decode_cpu

        return attention_decode_cpu.program_step(self, norm, state)

    def attend(self, q, k, v, state, ctx: Context, rotated: bool = False) -> torch.Tensor:
        """Projected q (B, N, H D), k and v (B, N, H_kv D) -> o_proj of the attention output (B, N, d_out);
        `rotated`: RoPE is already applied to q and k."""
        batch, n_new, _ = q.shape
        kv_state = state
        if self.short_conv is not None:
            qkv, conv_state = self.short_conv(
                ctx.zero_padding(torch.cat([q, k, v], dim=-1)), None if state is None else state.conv
            )
            q, k, v = qkv.split([q.shape[-1], k.shape[-1], v.shape[-1]], dim=-1)
            if state is not None:  # in place: the cache's tensors are allocated once
                state.conv.copy_(conv_state)
                kv_state = state.kv
        q = q.view(batch, n_new, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, N, D)
        k = k.view(batch, n_new, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, H_kv, N, D)
        v = v.view(batch, n_new, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.rope is not None and not rotated:
            rotations = self.rope.rotations(ctx.positions)
            q, k = self.rope(q, rotations), self.rope(k, rotations)
        query_positions = ctx.positions if ctx.valid is None else ctx.positions.masked_fill(~ctx.valid, EMPTY)
        if kv_state is not None:
            kv_state.holds_padding |= ctx.valid is not None
            k, v, key_positions = kv_state.update(k, v, query_positions)
        else:
            key_positions = query_positions
        sdpa = {"scale": self.scale}
        if self.n_kv_heads != self.n_heads:  # GQA: each key/value head serves H / H_kv query heads
            if SDPA_HAS_GQA:  # without copying the cache H / H_kv times
                sdpa["enable_gqa"] = True
            else:
                k = k.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
                v = v.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
        unmasked = ctx.valid is None and self.window is None
        if self.window is not None and ctx.valid is None and kv_state is None and n_new > 2 * block_size(self.window):
            y = sliding_window_attention(q, k, v, self.window, self.scale)  # keys at positions 0..N-1
        elif unmasked and kv_state is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, **sdpa)
        elif ctx.valid is None and n_new == 1 and kv_state is not None and kv_state.every_key_visible():  # decoding
            y = F.scaled_dot_product_attention(q, k, v, **sdpa)
        else:
            mask = attention_mask(query_positions, key_positions, self.window)  # (B, 1, N, T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **sdpa)
        return self.o_proj(y.transpose(1, 2).reshape(batch, n_new, self.n_heads * self.head_dim))

    def flops(self, seq_len: int) -> Flops:
        """Projections (and the short conv) per token; QK^T and PV, 4 * H * D per (query, key) pair the
        mask allows: sum_{t<=N} min(t, w) pairs in a prefill, min(N, w) for the N-th token."""
        dense = sum(linear_flops(p) for p in (self.q_proj, self.k_proj, self.v_proj, self.o_proj))
        if self.short_conv is not None:
            dense += conv_flops(self.short_conv)
        per_pair = 4 * self.n_heads * self.head_dim
        decode_keys = min(seq_len, self.window or seq_len)
        return Flops(dense, per_pair * attention_pairs(seq_len, self.window), per_pair * decode_keys)

    def cache_bytes(self, seq_len: int, batch: int, dtype_bytes: int) -> CacheBytes:
        """N slots of keys and values (window - 1 for the ring) with an int64 position each, the short
        conv's k - 1 inputs; the papers count 2 * min(N, w) * H_kv * D values."""
        slots = self.window - 1 if self.window is not None else seq_len
        visible = min(seq_len, self.window or seq_len)
        width = self.n_kv_heads * self.head_dim
        return CacheBytes(
            kv=2 * batch * slots * width * dtype_bytes,
            slots=batch * slots * POSITION_BYTES,
            state=0 if self.short_conv is None else conv_state_bytes(self.short_conv, batch, dtype_bytes),
            paper_kv=2 * batch * visible * width * dtype_bytes,
            simplified=2 * batch * visible * self.o_proj.out_features * dtype_bytes,
        )

    def mixing_operators(self, x: torch.Tensor, ctx: Context) -> list[MixingOperator]:
        return [self.operator(x, ctx, "attention" if self.window is None else "local_attention")]

    def operator(self, s, ctx, kind, adapters=None, post=None) -> MixingOperator:
        """Softmax probabilities of every head for input s (1, N, d_in), M_h = softmax(Q K^T * scale + mask);
        `post` maps the o_proj output onward (the shared block's MLP)."""
        length = s.shape[1]
        heads, kv_heads, head_dim = self.n_heads, self.n_kv_heads, self.head_dim
        q, k, v = self.q_proj(s), self.k_proj(s), self.v_proj(s)
        if adapters is not None:
            q, k, v = q + adapters[0](s), k + adapters[1](s), v + adapters[2](s)
        if self.short_conv is not None:  # Primer's depthwise conv on q, k, v: the values are after it
            qkv, _ = self.short_conv(ctx.zero_padding(torch.cat([q, k, v], dim=-1)))
            q, k, v = qkv.split([q.shape[-1], k.shape[-1], v.shape[-1]], dim=-1)
        q = q.view(1, length, heads, head_dim).transpose(1, 2)  # (1, H, N, D)
        k = k.view(1, length, kv_heads, head_dim).transpose(1, 2)
        v = v.view(1, length, kv_heads, head_dim).transpose(1, 2)
        if self.rope is not None:
            rotations = self.rope.rotations(ctx.positions)
            q, k = self.rope(q, rotations), self.rope(k, rotations)
        k, v = (t.repeat_interleave(heads // kv_heads, dim=1)[0] for t in (k, v))  # (H, N, D)
        scores = (q[0].double() @ k.double().transpose(-1, -2)) * self.scale  # (H, N, N)
        visible = attention_mask(ctx.positions[:1], ctx.positions[:1], self.window)[0]  # (1, N, N)
        probs = torch.softmax(scores.masked_fill(~visible, -torch.inf), dim=-1)

        def readout(mixed):
            out = self.o_proj(mixed.transpose(0, 1).reshape(1, length, heads * head_dim).to(s.dtype))
            return out if post is None else post(out)

        return MixingOperator(kind, "head", v, lambda groups: probs[groups], readout, chunk=heads)

    def decay_rates(self, x: torch.Tensor, ctx: Context) -> Decay | None:
        """Attention keeps every key (or the window): no decaying state."""
        return None


def attention_pairs(seq_len: int, window: int | None) -> int:
    """(query, key) pairs a causal mask allows over N tokens: sum_{t=1..N} min(t, w)."""
    if window is None or seq_len <= window:
        return seq_len * (seq_len + 1) // 2
    return window * (window + 1) // 2 + (seq_len - window) * window


def attention_mask(query_positions: torch.Tensor, key_positions: torch.Tensor, window: int | None) -> torch.Tensor:
    """Boolean (B, 1, N, T) mask: key s is visible to query t when pos_s <= pos_t < pos_s + window.

    Padding queries (position -1) see only padding keys, so no row of the softmax is empty.
    """
    q_pos = query_positions.unsqueeze(-1)  # (B, N, 1)
    k_pos = key_positions.unsqueeze(-2)  # (B, 1, T)
    visible = (k_pos <= q_pos) & ((k_pos != EMPTY) | (q_pos == EMPTY))
    if window is not None:
        visible &= q_pos - k_pos < window
    return visible.unsqueeze(1)
