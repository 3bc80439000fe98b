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

import torch
import torch.nn.functional as F
from torch import nn

from ..cache import EMPTY, KVCache, LayerState
from .context import Context
from .conv import CausalConv1d
from .rope import RotaryEmbedding

SDPA_HAS_GQA = tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 5)  # enable_gqa


class Attention(nn.Module):
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
            config.head_dim,
            window=options.window if char == "L" else None,
            rope=options.rope,
            rope_theta=options.rope_theta,
            rope_fraction=options.rope_fraction,
            scale=options.scale,
            qkv_bias=options.qkv_bias,
            out_bias=options.out_bias,
            short_conv=options.short_conv,
        )

    def allocate_state(self, batch_size: int, max_len: int | None, device, dtype) -> KVCache | LayerState:
        """A KVCache; with a short conv, LayerState(kv=KVCache, conv=(B, q+k+v channels, k-1))."""
        kv = KVCache(
            batch_size, self.n_kv_heads, self.head_dim, window=self.window, max_len=max_len, device=device, dtype=dtype
        )
        if self.short_conv is None:
            return kv
        channels, width = self.short_conv.weight.shape[0], self.short_conv.kernel_size
        return LayerState(kv=kv, conv=torch.zeros(batch_size, channels, width - 1, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, state, ctx: Context, adapters=None) -> torch.Tensor:
        """x (B, N, d_in) -> (B, N, d_out). `adapters`: optional LoRA modules added to q, k, v (Zamba2)."""
        batch, n_new, _ = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if adapters is not None:
            q, k, v = q + adapters[0](x), k + adapters[1](x), v + adapters[2](x)
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
        if self.rope is not None:
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
        if unmasked and kv_state is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, **sdpa)
        elif unmasked and n_new == 1 and not kv_state.holds_padding:  # decoding: every stored key is visible
            y = F.scaled_dot_product_attention(q, k, v, **sdpa)
        else:
            mask = attention_mask(query_positions, key_positions, self.window)  # (B, 1, N, T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **sdpa)
        return self.o_proj(y.transpose(1, 2).reshape(batch, n_new, self.n_heads * self.head_dim))


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
