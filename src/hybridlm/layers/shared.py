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

from dataclasses import dataclass

import torch
from torch import nn

from ..cache import KVCache
from ..ops.dispatch import fused_decode_applies
from .attention import Attention
from .base import POSITION_BYTES, CacheBytes, Flops, Mixer, check_positive, linear_flops, require
from .context import Context
from .mixing import MixingOperator
from .mlp import MLP, check_activation
from .norm import RMSNorm


@dataclass
class SharedConfig:
    """The shared attention + MLP block (`S`), Zamba / Zamba2."""

    n_blocks: int = 1  # Zamba2 cycles 2 blocks A, B, A, B ...
    n_heads: int | None = None  # None: the model's n_heads
    n_kv_heads: int | None = None  # None: n_heads of the block
    d_ff: int | None = None  # None: the MLP's d_ff
    activation: str = "gelu"
    rope: bool = False
    lora_rank: int = 0  # per-invocation LoRA adapters (Zamba2); 0 = none
    lora_attention: bool = False  # adapters on q, k, v (needs lora_rank > 0)
    lora_mlp: bool = True  # adapter on the MLP's gate/up projection (needs lora_rank > 0)
    scale: float | None = None  # None: (head_dim / 2) ** -0.5 as Zamba does

    def heads(self, model) -> int:
        return self.n_heads or model.n_heads

    def kv_heads(self, model) -> int:
        return self.n_kv_heads or self.heads(model)

    def head_size(self, model) -> int:
        """The shared block attends over concat(x, embeddings): 2 * d_model split over its heads."""
        return 2 * model.d_model // self.heads(model)

    def ff_width(self, model) -> int:
        return self.d_ff or model.mlp.width(model)

    def validate(self, model, chars: str) -> None:
        check_positive(self, "shared.", ("n_blocks", "n_heads", "n_kv_heads", "d_ff", "scale"))
        require(self.lora_rank >= 0, f"shared.lora_rank={self.lora_rank} must be >= 0 (0 = no adapters)")
        check_activation("shared", self.activation)
        heads, kv_heads = self.heads(model), self.kv_heads(model)
        require(
            "S" not in chars or (2 * model.d_model % heads == 0 and heads % kv_heads == 0),
            f"shared block: its {heads} heads must divide 2 * d_model = {2 * model.d_model} and "
            f"shared.n_kv_heads = {kv_heads} must divide them",
        )


class SharedBlock(nn.Module):
    """The shared weights; held once by the model, counted once."""

    def __init__(self, config):
        super().__init__()
        options, d = config.shared, config.d_model
        n_heads, head_dim = options.heads(config), options.head_size(config)
        self.input_norm = RMSNorm(2 * d, config.norm_eps, config.norm_offset)
        self.attention = Attention(
            2 * d,
            d,
            n_heads,
            options.kv_heads(config),
            head_dim,
            rope=options.rope,
            rope_theta=config.attention.rope_theta,
            scale=options.scale if options.scale is not None else (head_dim / 2) ** -0.5,
        )
        self.ff_norm = RMSNorm(d, config.norm_eps, config.norm_offset)
        self.mlp = MLP(d, options.ff_width(config), options.activation, gated=True)


def lora(d_in: int, d_out: int, rank: int) -> nn.Sequential:
    """x -> B (A x): A (rank, d_in) normal, B (d_out, rank) zero at init."""
    adapter = nn.Sequential(nn.Linear(d_in, rank, bias=False), nn.Linear(rank, d_out, bias=False))
    adapter[1].zero_init = True
    return adapter


class SharedAttention(Mixer):
    """One `S` invocation: its own output linear (and adapters), the shared block's weights."""

    chars = {"S": "shared_attention"}
    config_name = "shared"
    Config = SharedConfig
    attention_chars = "S"
    pre_norm = False  # the block norms concat(x, e) itself
    feeds_next_mixer = True  # output t goes into the next mixer's input, not the residual
    shared_attribute = "shared_blocks"  # the model holds the blocks once, as `model.shared_blocks`

    def __init__(self, config, block_index: int = 0):
        super().__init__()
        options, d = config.shared, config.d_model
        self.block_index = block_index
        self.n_heads, self.n_kv_heads = options.heads(config), options.kv_heads(config)
        self.head_dim, self.d_ff = options.head_size(config), options.ff_width(config)
        self.linear = nn.Linear(d, d, bias=False)
        rank = options.lora_rank
        if rank and options.lora_attention:
            q_width, kv_width = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
            self.attention_adapters = nn.ModuleList(
                [lora(2 * d, q_width, rank), lora(2 * d, kv_width, rank), lora(2 * d, kv_width, rank)]
            )
        else:
            self.attention_adapters = None
        self.mlp_adapter = lora(d, 2 * self.d_ff, rank) if rank and options.lora_mlp else None

    @classmethod
    def from_config(cls, config, char: str = "S", ordinal: int = 0) -> SharedAttention:
        """The `ordinal`-th `S` of the pattern uses shared block ordinal % n_blocks (A, B, A, B ...)."""
        return cls(config, ordinal % config.shared.n_blocks)

    @classmethod
    def shared_modules(cls, config) -> nn.ModuleList:
        return nn.ModuleList(SharedBlock(config) for _ in range(config.shared.n_blocks))

    @classmethod
    def describe_options(cls, config) -> str:
        options = config.shared
        return f"shared x{options.n_blocks}" + (f" lora={options.lora_rank}" if options.lora_rank else "")

    def note(self) -> str:
        return f", block {self.block_index}"

    def allocate_state(self, batch_size: int, max_len, device, dtype) -> KVCache:
        """This invocation's own keys and values (the weights are shared, the cache is not)."""
        return KVCache(batch_size, self.n_kv_heads, self.head_dim, max_len=max_len, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, state, ctx: Context) -> torch.Tensor:
        """x (b, l, d) the residual stream -> t (b, l, d)."""
        if x.shape[1] == 1 and state is not None:  # decoding one token: fused calls when they apply
            out = self.decode_token(x, None, state, ctx)
            if out is not None:
                return out
        block = ctx.shared[self.shared_attribute][self.block_index]
        s = block.input_norm(torch.cat([x, ctx.embeddings], dim=-1))
        return self._after_attention(block, block.attention(s, state, ctx, adapters=self.attention_adapters))

    def decode_token(self, x: torch.Tensor, norm, state, ctx: Context) -> torch.Tensor | None:
        """t for one token x (b, 1, d): the norm of [x, e] and q, k, v with their adapters in one fused
        call, the block's attention (ops/attention_decode_cpu.py, or `attend` where that does not apply),
        then its norm, MLP (adapter included) and this call site's linear in a second
        (ops/shared_step_cpu.py). The block norms its own input: `norm` is None (the
        model calls this through `forward`). None where the fused calls do not apply."""
        block = ctx.shared[self.shared_attribute][self.block_index]
        attention = block.attention
        if norm is not None or state is None or ctx.valid is not None or attention.short_conv is not None:
            return None
        adapters = [*(self.attention_adapters or ()), *([self.mlp_adapter] if self.mlp_adapter is not None else [])]
        parts = (block, block.input_norm, attention, block.ff_norm, block.mlp, self.linear, *adapters)
        if not fused_decode_applies(x, *parts) or ctx.embeddings.dtype != torch.float32:
            return None
        from ..ops import attention_decode_cpu, decode_cpu, shared_step_cpu

        weights = decode_cpu.cached_weights(self, lambda site: shared_step_cpu.site_weights(block, site), block)
        if weights is None:
            return None
        projection, after = weights
        qkv = shared_step_cpu.project(x, ctx.embeddings, projection)
        attended = None
        if attention.rope is None and isinstance(state, KVCache):  # the cache write, softmax and o_proj fused
            attended = attention_decode_cpu.attend_token(attention, qkv, state, ctx.positions)
        if attended is None:
            q, k, v = qkv.split([p.out_features for p in (attention.q_proj, attention.k_proj, attention.v_proj)], -1)
            attended = attention.attend(q, k, v, state, ctx)
        return shared_step_cpu.after_attention(attended, after)

    def decode_program_step(self, norm, state, batch: int, shared: dict):
        """This call site's step in a whole-step decode (ops/decode_program.py), or None: where
        `decode_token` fuses every part (a KV cache, no RoPE or short conv on the block's attention)."""
        block = shared[self.shared_attribute][self.block_index]
        attention = block.attention
        if norm is not None or not isinstance(state, KVCache) or attention.short_conv or attention.rope:
            return None
        from ..ops import shared_step_cpu

        return shared_step_cpu.program_step(self, block, state)

    def _after_attention(self, block: SharedBlock, attended: torch.Tensor) -> torch.Tensor:
        normed = block.ff_norm(attended)
        delta = self.mlp_adapter(normed) if self.mlp_adapter is not None else None
        return self.linear(block.mlp(normed, gate_up_delta=delta))

    def flops(self, seq_len: int) -> Flops:
        """One invocation: attention reading [x, e] (2d), the block's gated MLP, the adapters and the
        output linear; QK^T and PV over the N(N+1)/2 causal pairs, 4 * H * D each."""
        d = self.linear.in_features
        q_width, kv_width = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        attention = 2 * (2 * d * q_width + 2 * 2 * d * kv_width + q_width * d)
        dense = attention + 3 * 2 * d * self.d_ff + linear_flops(self.linear)
        adapters = [*(self.attention_adapters or ()), *([self.mlp_adapter] if self.mlp_adapter is not None else [])]
        dense += sum(linear_flops(linear) for adapter in adapters for linear in adapter)
        per_pair = 4 * self.n_heads * self.head_dim
        return Flops(dense, per_pair * seq_len * (seq_len + 1) // 2, per_pair * seq_len)

    def cache_bytes(self, seq_len: int, batch: int, dtype_bytes: int) -> CacheBytes:
        """This invocation's own keys and values (N slots) and their positions."""
        kv = 2 * batch * seq_len * self.n_kv_heads * self.head_dim * dtype_bytes
        simplified = 2 * batch * seq_len * self.linear.out_features * dtype_bytes
        return CacheBytes(kv=kv, slots=batch * seq_len * POSITION_BYTES, paper_kv=kv, simplified=simplified)

    def mixing_operators(self, x: torch.Tensor, ctx: Context) -> list[MixingOperator]:
        """The block's attention on [x, embeddings], then its MLP and this invocation's output linear."""
        block = ctx.shared[self.shared_attribute][self.block_index]
        s = block.input_norm(torch.cat([x, ctx.embeddings[:1]], dim=-1))
        return [
            block.attention.operator(
                s,
                ctx,
                "shared_attention",
                self.attention_adapters,
                lambda attended: self._after_attention(block, attended),
            )
        ]

    def decay_rates(self, x, ctx) -> None:
        return None
