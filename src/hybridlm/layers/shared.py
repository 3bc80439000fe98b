"""Zamba's shared attention block (`S`): one set of attention + MLP weights reused at every `S`.

Glossary: b batch, l new tokens, d model width, r LoRA rank, f MLP width.

    s   = concat(x, e)                                 (b, l, 2d), e = the token embeddings
    a   = Attention(RMSNorm_2d(s))                     reads 2d, writes d; no RoPE in Zamba
    m   = MLP(RMSNorm_d(a))                            no residuals inside the block (as in HF)
    t   = W_k m                                        per-invocation linear (k = this `S`)
The model then runs the next mixer as x + Mixer(Norm(x + t)): t feeds the next mixer's input and
is not added to the residual stream (Zamba, section 3; HF ZambaHybridLayer).
Zamba2 keeps `n_blocks` blocks cycled A, B, A, B ... and adds per-invocation LoRA adapters
(Hu et al. 2021) to q, k, v and to the MLP's gate/up projection; their up-matrices start at zero.
"""

from __future__ import annotations

import torch
from torch import nn

from ..cache import KVCache
from .attention import Attention
from .context import Context
from .mlp import MLP
from .norm import RMSNorm


class SharedBlock(nn.Module):
    """The shared weights; held once by the model, counted once."""

    def __init__(self, config):
        super().__init__()
        options, d = config.shared, config.d_model
        n_heads, head_dim = config.shared_heads, config.shared_head_dim
        self.input_norm = RMSNorm(2 * d, config.norm_eps, config.norm_offset)
        self.attention = Attention(
            2 * d,
            d,
            n_heads,
            config.shared_kv_heads,
            head_dim,
            rope=options.rope,
            rope_theta=config.attention.rope_theta,
            scale=options.scale if options.scale is not None else (head_dim / 2) ** -0.5,
        )
        self.ff_norm = RMSNorm(d, config.norm_eps, config.norm_offset)
        self.mlp = MLP(d, options.d_ff or config.d_ff, options.activation, gated=True)


def lora(d_in: int, d_out: int, rank: int) -> nn.Sequential:
    """x -> B (A x): A (rank, d_in) normal, B (d_out, rank) zero at init."""
    adapter = nn.Sequential(nn.Linear(d_in, rank, bias=False), nn.Linear(rank, d_out, bias=False))
    adapter[1].zero_init = True
    return adapter


class SharedAttention(nn.Module):
    """One `S` invocation: its own output linear (and adapters), the shared block's weights."""

    pre_norm = False  # the block norms concat(x, e) itself
    feeds_next_mixer = True  # output t goes into the next mixer's input, not the residual

    def __init__(self, config, block_index: int = 0):
        super().__init__()
        options, d = config.shared, config.d_model
        self.block_index = block_index
        self.n_kv_heads, self.head_dim = config.shared_kv_heads, config.shared_head_dim
        self.linear = nn.Linear(d, d, bias=False)
        rank = options.lora_rank
        if rank and options.lora_attention:
            q_width, kv_width = config.shared_heads * self.head_dim, self.n_kv_heads * self.head_dim
            self.attention_adapters = nn.ModuleList(
                [lora(2 * d, q_width, rank), lora(2 * d, kv_width, rank), lora(2 * d, kv_width, rank)]
            )
        else:
            self.attention_adapters = None
        d_ff = options.d_ff or config.d_ff
        self.mlp_adapter = lora(d, 2 * d_ff, rank) if rank and options.lora_mlp else None

    @classmethod
    def from_config(cls, config, char: str = "S", ordinal: int = 0) -> SharedAttention:
        """The `ordinal`-th `S` of the pattern uses shared block ordinal % n_blocks (A, B, A, B ...)."""
        return cls(config, ordinal % config.shared.n_blocks)

    def allocate_state(self, batch_size: int, max_len, device, dtype) -> KVCache:
        """This invocation's own keys and values (the weights are shared, the cache is not)."""
        return KVCache(batch_size, self.n_kv_heads, self.head_dim, max_len=max_len, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, state, ctx: Context) -> torch.Tensor:
        """x (b, l, d) the residual stream -> t (b, l, d)."""
        block = ctx.shared_blocks[self.block_index]
        s = block.input_norm(torch.cat([x, ctx.embeddings], dim=-1))
        a = block.attention(s, state, ctx, adapters=self.attention_adapters)
        a_normed = block.ff_norm(a)
        delta = self.mlp_adapter(a_normed) if self.mlp_adapter is not None else None
        return self.linear(block.mlp(a_normed, gate_up_delta=delta))
