"""`HybridLM`: token embedding -> one residual sub-layer per pattern character -> norm -> LM head.

Glossary: B batch, N new tokens, d model width, V vocabulary.

Each sub-layer is x = x + Mixer(Norm(x)) with pre-norm RMSNorm (F and E are sub-layers too).
A family changes this only through its class attributes (layers/base.py): one that norms its own
input has `pre_norm = False`, one whose output t feeds the next mixer, x = x + Mixer(Norm(x + t)),
has `feeds_next_mixer = True` (both: the shared block `S`). Weights a family shares across its
sub-layers (`shared_modules`) are held once here, under the family's `shared_attribute`, and reach
the sub-layers through the context. The model never asks which family a mixer is.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .cache import EMPTY, Cache
from .config import ModelConfig
from .layers import MIXERS
from .layers.base import NO_WEIGHT_DECAY
from .layers.context import Context
from .layers.norm import RMSNorm
from .ops.dispatch import fused_decode_applies


class Sublayer(nn.Module):
    """One pattern character: its pre-norm (unless the mixer norms itself) and its module."""

    def __init__(self, config: ModelConfig, char: str, ordinal: int):
        super().__init__()
        self.char = char
        family = MIXERS[char]
        self.norm = RMSNorm(config.d_model, config.norm_eps, config.norm_offset) if family.pre_norm else None
        self.mixer = family.from_config(config, char, ordinal)
        self.feeds_next_mixer = family.feeds_next_mixer
        # a mixer with `decode_token` can run norm + mixer for one decoded token in one fused call
        self.fused_decode = self.norm is not None and hasattr(self.mixer, "decode_token")

    def program_step(self, state, batch: int, shared: dict):
        """This sub-layer's step in a whole-step decode (ops/decode_program.py), or None where its mixer
        has no `decode_program_step`; `shared`: the model's shared modules (as `Context.shared`)."""
        if not hasattr(self.mixer, "decode_program_step"):
            return None
        return self.mixer.decode_program_step(self.norm, state, batch, shared)

    def forward(self, x: torch.Tensor, state, ctx: Context) -> torch.Tensor:
        if self.fused_decode and ctx.valid is None:
            out = self.mixer.decode_token(x, self.norm, state, ctx)
            if out is not None:
                return out
        return self.mixer(self.norm(x) if self.norm is not None else x, state, ctx)


class HybridLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        chars = config.chars
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.shared_modules: dict[str, nn.Module] = {}  # attribute -> weights a family shares (held once)
        for family in dict.fromkeys(MIXERS[char] for char in chars):
            modules = family.shared_modules(config)
            if modules is not None:
                self.add_module(family.shared_attribute, modules)
                self.shared_modules[family.shared_attribute] = modules
        seen: dict[str, int] = {}
        layers = []
        for char in chars:
            layers.append(Sublayer(config, char, seen.get(char, 0)))
            seen[char] = seen.get(char, 0) + 1
        self.layers = nn.ModuleList(layers)
        self.final_norm = RMSNorm(config.d_model, config.norm_eps, config.norm_offset)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.gradient_checkpointing = False  # recompute each sub-layer in backward: less activation memory
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        # names of the parameters their mixers tagged `no_weight_decay`, recorded now: sharding (FSDP)
        # later replaces the parameter objects, and their attributes with them
        self.no_weight_decay = frozenset(
            name for name, parameter in self.named_parameters() if getattr(parameter, NO_WEIGHT_DECAY, False)
        )
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    # ---- initialisation ------------------------------------------------------------------------
    def init_weights(self) -> None:
        """Normal(0, init_std) for linears and embeddings; residual outputs scaled by 1/sqrt(#sub-layers)
        (GPT-2); LoRA up-matrices zero; mixers' own parameters (A_log, dt, poles ...) by their papers."""
        std = self.config.init_std
        residual_std = std / math.sqrt(len(self.layers))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                if getattr(module, "zero_init", False):
                    nn.init.zeros_(module.weight)
                else:
                    nn.init.normal_(
                        module.weight, std=residual_std if getattr(module, "residual_output", False) else std
                    )
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)
            if hasattr(module, "reset_special_parameters"):
                module.reset_special_parameters()

    # ---- forward ---------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> torch.Tensor:
        """input_ids (B, N) -> logits (B, N, V) (the last `logits_to_keep` positions when > 0).

        With `cache`, continue from it and update it in place: any N (1 = decode, more = prefill or
        chunked prefill). `attention_mask` (B, N), 1 for real tokens and 0 for left padding.
        """
        _check_inputs(input_ids, cache, attention_mask)
        valid = None if attention_mask is None else attention_mask.to(torch.bool)
        if valid is not None and bool(valid.all()):
            valid = None
        logits = self._whole_step(input_ids, cache) if cache is not None and valid is None else None
        if logits is not None:
            return logits  # soft-capped in the same call
        positions = self._positions(input_ids, cache, valid)
        x = self.embed_tokens(input_ids)
        if self.config.embedding_scale is not None:
            x = x * self._embedding_scale(x.dtype)
        ctx = Context(positions=positions, valid=valid, embeddings=x, shared=self.shared_modules)
        pending = None  # output of a shared block, waiting for the next mixer
        for index, layer in enumerate(self.layers):
            state = None if cache is None else cache.states[index]
            layer_input = x if pending is None else x + pending
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                out = checkpoint(layer, layer_input, state, ctx, use_reentrant=False)
            else:
                out = layer(layer_input, state, ctx)
            if layer.feeds_next_mixer:
                pending = out
            else:
                x, pending = x + out, None
        if cache is not None:
            cache.seen = cache.seen + (input_ids.shape[1] if valid is None else valid.sum(1))
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = self._fused_head(x) if fused_decode_applies(x, self.final_norm, self.lm_head) else None
        if logits is None:
            logits = self.lm_head(self.final_norm(x))
        return self._softcap(logits)

    def _softcap(self, logits: torch.Tensor) -> torch.Tensor:
        if self.config.logit_softcap:
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        return logits

    def _whole_step(self, input_ids: torch.Tensor, cache: Cache) -> torch.Tensor | None:
        """Logits (soft-capped) of one decoded token per row by one fused call for the whole model
        (ops/decode_program.py), the cache updated; None where that does not apply (the sub-layers
        then run one by one)."""
        if input_ids.shape[1] != 1 or not input_ids.is_cpu:
            return None
        from .ops import decode_program

        return decode_program.decode_logits(self, cache, input_ids)

    def _fused_head(self, x: torch.Tensor) -> torch.Tensor | None:
        """lm_head(final_norm(x)) for one token in one fused call (ops/decode_cpu.py), or None."""
        from .ops import decode_cpu

        norm, head = self.final_norm, self.lm_head
        weights = decode_cpu.cached_weights(self, lambda _: decode_cpu.projection_weights(norm, (head,)), norm)
        return None if weights is None else decode_cpu.norm_project(x, weights)

    def _positions(self, input_ids: torch.Tensor, cache: Cache | None, valid: torch.Tensor | None) -> torch.Tensor:
        batch, n_new = input_ids.shape
        start = cache.seen.unsqueeze(1) if cache is not None else input_ids.new_zeros(batch, 1)
        if valid is None:
            return start + torch.arange(n_new, device=input_ids.device)
        positions = start + valid.long().cumsum(1) - 1
        return positions.masked_fill(~valid, EMPTY)

    def _embedding_scale(self, dtype: torch.dtype) -> torch.Tensor:
        scale = torch.tensor(self.config.embedding_scale)
        if self.config.embedding_scale_bf16:  # RecurrentGemma stores sqrt(d) as a bf16 tensor
            scale = scale.to(torch.bfloat16)
        return scale.to(dtype)

    # ---- inference ---------------------------------------------------------------------------------
    def allocate_cache(self, batch_size: int, max_len: int | None = None, device=None, dtype=None) -> Cache:
        """A cache with every sub-layer's state; `max_len` preallocates KV caches, None grows them."""
        parameter = self.embed_tokens.weight
        device = device or parameter.device
        dtype = dtype or parameter.dtype
        states = [layer.mixer.allocate_state(batch_size, max_len, device, dtype) for layer in self.layers]
        return Cache(states, torch.zeros(batch_size, dtype=torch.long, device=device))

    def generate(self, input_ids, max_new_tokens: int, **sampling):
        """Prompt + up to `max_new_tokens` new tokens; see `hybridlm.generate.generate`."""
        from .generate import generate

        return generate(self, input_ids, max_new_tokens, **sampling)

    def stream(self, input_ids, max_new_tokens: int, **sampling):
        """Yield new tokens (a (B,) tensor per step) as they are sampled; see `hybridlm.generate.stream`."""
        from .generate import stream

        return stream(self, input_ids, max_new_tokens, **sampling)

    # ---- training helpers --------------------------------------------------------------------------
    def aux_loss(self) -> torch.Tensor:
        """MoE load-balancing loss of the last forward: sum over E layers of coef * E * sum f_i P_i
        (any sub-layer with routing `stats` contributes)."""
        stats = (getattr(layer.mixer, "stats", None) for layer in self.layers)
        terms = [layer_stats.aux for layer_stats in stats if layer_stats is not None]
        if not terms:
            return torch.zeros((), device=self.embed_tokens.weight.device)
        return self.config.moe.aux_loss_coef * torch.stack(terms).sum()

    def num_parameters(self) -> int:
        """Distinct parameters (shared blocks and tied embeddings counted once)."""
        return sum(p.numel() for p in self.parameters())


def _check_inputs(input_ids: torch.Tensor, cache: Cache | None, attention_mask: torch.Tensor | None) -> None:
    """Shapes only (no reads of the values): a wrong call is named here, not deep inside a mixer."""
    if input_ids.ndim != 2 or input_ids.dtype.is_floating_point or input_ids.dtype.is_complex:
        raise ValueError(
            f"input_ids must be integer token ids of shape (batch, length), got {input_ids.dtype} "
            f"{tuple(input_ids.shape)}"
        )
    if input_ids.shape[1] == 0:
        raise ValueError(f"input_ids holds no tokens: shape {tuple(input_ids.shape)}")
    if cache is not None and cache.seen.shape[0] != input_ids.shape[0]:
        raise ValueError(f"input_ids has batch {input_ids.shape[0]}, the cache was allocated for {cache.seen.shape[0]}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids {tuple(input_ids.shape)}: they differ"
        )
