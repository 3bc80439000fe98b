"""Mixture-of-Experts feed-forward sub-layer (`E`), Shazeer et al. 2017 / Switch (Fedus et al. 2022).

Glossary: B batch, N tokens, d width, E experts, K experts per token, T = B * N tokens.

    G(x) = softmax(x W_g)                      router probabilities over all E experts
    y    = sum_{i in TopK(G(x))} G_i(x) f_i(x)  (weights not renormalised unless configured; Jamba)
    aux  = E * sum_i f_i * P_i                 f_i: fraction of tokens whose top-K holds i (sum = K),
                                               P_i: mean router probability of expert i
The aux value is K under balanced routing and E under full collapse; the training loss adds
`aux_loss_coef * aux` (1e-2 by default, 1e-3 in Jamba).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..ops.dispatch import fused_decode_applies
from ..ops.grouped_mm import grouped_mm
from .base import Flops, TokenwiseMixer, check_positive, linear_flops, require
from .mlp import MLP


@dataclass
class MoEConfig:
    """Mixture-of-Experts MLP (`E`): top-k of n_experts gated MLPs, softmax router."""

    n_experts: int = 8
    top_k: int = 2
    d_ff: int | None = None  # None: the MLP's d_ff
    aux_loss_coef: float = 1e-2
    normalize_top_k: bool = False  # Jamba: no renormalisation of the selected router weights

    def ff_width(self, model) -> int:
        return self.d_ff or model.mlp.width(model)

    def validate(self, model, chars: str) -> None:
        check_positive(self, "moe.", ("n_experts", "top_k", "d_ff"))
        require(
            math.isfinite(self.aux_loss_coef) and self.aux_loss_coef >= 0,
            f"moe.aux_loss_coef={self.aux_loss_coef} must be finite and >= 0",
        )
        require(
            "E" not in chars or self.top_k <= self.n_experts,
            f"moe.top_k={self.top_k} must be in [1, moe.n_experts={self.n_experts}]",
        )


@dataclass
class RouterStats:
    load: torch.Tensor  # (E,) f_i, fraction of tokens routed to each expert (sums to K)
    mean_prob: torch.Tensor  # (E,) P_i (detached)
    entropy: torch.Tensor  # () mean entropy of the router distribution, in nats (detached)
    aux: torch.Tensor  # () E * sum f_i P_i (differentiable through P)


class MoE(TokenwiseMixer):
    chars = {"E": "moe"}
    config_name = "moe"
    Config = MoEConfig
    role = "ffn"

    def __init__(
        self, d_model, d_ff, n_experts, top_k, activation="silu", gated=True, bias=False, normalize_top_k=False
    ):
        super().__init__()
        self.n_experts, self.top_k, self.normalize_top_k = n_experts, top_k, normalize_top_k
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.experts = nn.ModuleList(MLP(d_model, d_ff, activation, gated, bias) for _ in range(n_experts))
        self._routing: tuple | None = None  # (probs, top_experts, valid) of the last forward

    @classmethod
    def from_config(cls, config, char: str = "E", ordinal: int = 0) -> MoE:
        moe = config.moe
        return cls(
            config.d_model,
            moe.ff_width(config),
            moe.n_experts,
            moe.top_k,
            config.mlp.activation,
            config.mlp.gated,
            config.mlp.bias,
            moe.normalize_top_k,
        )

    @classmethod
    def describe_options(cls, config) -> str:
        return f"moe {config.moe.top_k}/{config.moe.n_experts}"

    def allocate_state(self, batch_size, max_len, device, dtype):
        return None

    def flops(self, seq_len: int) -> Flops:
        """The router and the top-k experts a token uses."""
        return Flops(linear_flops(self.router) + self.top_k * self.experts[0].flops(seq_len).dense)

    def active_parameters(self) -> int:
        """The router and top_k of the experts."""
        per_expert = sum(p.numel() for p in self.experts[0].parameters())
        return sum(p.numel() for p in self.parameters()) - per_expert * (len(self.experts) - self.top_k)

    def forward(self, x: torch.Tensor, state=None, ctx=None) -> torch.Tensor:
        """x (B, N, d) -> (B, N, d); keeps the routing for `self.stats` (aux loss, monitoring)."""
        tokens = x.reshape(-1, x.shape[-1])  # (T, d)
        probs = torch.softmax(self.router(tokens).float(), dim=-1)  # (T, E), fp32 as in Jamba
        top_probs, top_experts = probs.topk(self.top_k, dim=-1)  # (T, K)
        if self.normalize_top_k:
            top_probs = top_probs / top_probs.sum(-1, keepdim=True)
        training = torch.is_grad_enabled()
        if torch.compiler.is_compiling():
            output = self._grouped(tokens, top_probs.to(tokens.dtype), top_experts)
        elif not training and tokens.shape[0] * self.top_k <= self.n_experts:
            output = self._few_tokens(tokens, top_probs.to(tokens.dtype), top_experts)
        else:
            output = torch.zeros_like(tokens)
            for expert_index, expert in enumerate(self.experts):
                token_index, slot = torch.where(top_experts == expert_index)
                # in training every expert runs, on zero tokens if none chose it: its parameters then
                # get a (zero) gradient on every rank, which DDP's and FSDP's reductions require
                if token_index.numel() == 0 and not training:
                    continue
                weight = top_probs[token_index, slot].unsqueeze(-1).to(tokens.dtype)
                output.index_add_(0, token_index, expert(tokens[token_index]) * weight)
        valid = None if ctx is None or ctx.valid is None else ctx.valid.reshape(-1)
        self._routing = (probs, top_experts, valid)
        return output.view_as(x)

    def decode_token(self, x: torch.Tensor, norm, state=None, ctx=None) -> torch.Tensor | None:
        """One decoded token x (b, 1, d): norm, router, top-k and the chosen experts' MLPs in one fused
        call (ops/moe_decode_cpu.py); None where that does not apply."""
        # rows x top-k above the expert count: the eager path reads each expert once for all rows,
        # where the fused call reads each row's experts again
        if x.shape[0] * self.top_k > self.n_experts or not fused_decode_applies(x, self, norm):
            return None
        from ..ops.moe_decode_cpu import moe_token

        fused = moe_token(self, x, norm)
        if fused is None:
            return None
        output, probs, top_experts = fused
        self._routing = (probs, top_experts, None)
        return output

    def decode_program_step(self, norm, state, batch: int, shared: dict):
        """This sub-layer's step in a whole-step decode (ops/decode_program.py), or None: as `decode_token`,
        none when rows x top-k exceed the experts."""
        if batch * self.top_k > self.n_experts:
            return None
        from ..ops.decode_program import ProgramStep
        from ..ops.moe_decode_cpu import token_arguments

        entry = token_arguments(self, norm, batch)
        return None if entry is None else ProgramStep("moe", entry[1], [entry[0]])

    def _few_tokens(self, tokens: torch.Tensor, top_probs: torch.Tensor, top_experts: torch.Tensor) -> torch.Tensor:
        """Decoding: each of the T * K chosen (token, expert) pairs directly, no search over experts."""
        rows = []
        for token, (chosen, weights) in enumerate(zip(top_experts.tolist(), top_probs.unbind(0))):
            one = tokens[token : token + 1]
            rows.append(sum(weights[j] * self.experts[expert](one) for j, expert in enumerate(chosen)))
        return torch.cat(rows)

    def _grouped(self, tokens: torch.Tensor, top_probs: torch.Tensor, top_experts: torch.Tensor) -> torch.Tensor:
        """Every (token, expert) pair sorted by expert, each expert's rows one group of `grouped_mm`:
        the same sums as the loop, with no shape that depends on the routing, so torch.compile keeps
        the layer in one graph. Eager runs keep the loop, which skips the stacking of the weights."""
        flat_experts = top_experts.flatten()  # (T K,)
        order = flat_experts.argsort(stable=True)
        token_of = order // self.top_k
        per_expert = (flat_experts.unsqueeze(1) == torch.arange(self.n_experts, device=tokens.device)).sum(0)
        group_ends = per_expert.cumsum(0).to(torch.int32)  # (E,)
        sorted_experts = flat_experts[order]

        def grouped_linear(x, linears):
            weights = torch.stack([linear.weight for linear in linears]).transpose(1, 2)  # (E, in, out)
            y = grouped_mm(x, weights.contiguous(), group_ends)
            if linears[0].bias is not None:
                y = y + torch.stack([linear.bias for linear in linears])[sorted_experts]
            return y

        rows = tokens[token_of]  # (T K, d)
        up = grouped_linear(rows, [expert.up_proj for expert in self.experts])
        activation = self.experts[0].activation
        if self.experts[0].gate_proj is None:
            hidden = activation(up)
        else:
            hidden = activation(grouped_linear(rows, [expert.gate_proj for expert in self.experts])) * up
        weighted = (
            grouped_linear(hidden, [expert.down_proj for expert in self.experts]) * top_probs.flatten()[order, None]
        )
        return torch.zeros_like(tokens).index_add(0, token_of, weighted)

    @property
    def stats(self) -> RouterStats | None:
        """Routing statistics of the last forward, computed when asked (decoding never pays for them)."""
        if self._routing is None:
            return None
        probs, top_experts, valid = self._routing
        return router_stats(probs, top_experts, self.n_experts, valid)


def router_stats(probs: torch.Tensor, top_experts: torch.Tensor, n_experts: int, valid=None) -> RouterStats:
    """Load f_i, mean probability P_i, entropy and E * sum f_i P_i over the (real) tokens."""
    if valid is not None:
        probs, top_experts = probs[valid], top_experts[valid]
    n_tokens = max(probs.shape[0], 1)
    chosen = torch.zeros_like(probs).scatter_(1, top_experts, 1.0)  # (T, E) one where expert in top-K
    load = chosen.sum(0) / n_tokens
    mean_prob = probs.sum(0) / n_tokens
    aux = n_experts * (load * mean_prob).sum()  # differentiable through P only, as in Switch
    detached = probs.detach()
    entropy = -(detached * detached.clamp_min(1e-12).log()).sum(-1).sum() / n_tokens
    return RouterStats(load=load, mean_prob=mean_prob.detach(), entropy=entropy, aux=aux)
