"""A fused CPU Mixture-of-Experts step for one decoded token: norm, router, top-k and experts in one call.

Glossary: b batch (rows decoded together), d model width, E experts, K experts per token.

For each row, with x_hat = RMSNorm(x) (layers/moe.py, Shazeer et al. 2017):

    G = softmax(W_g x_hat + b_g)        (E,) router probabilities
    y = sum_{i in TopK(G)} G_i f_i(x_hat)  the weights renormalised to sum 1 when configured

f_i the i-th expert's MLP (ops/decode_cpu.py `mlp_into`). As torch ops around
the fused MLP steps this was a softmax, a topk, Python floats from `tolist`, a scaled copy and a sum
per expert: ~25 dispatches per layer, most of an MoE layer's time beyond its weight reads at the
small preset. Top-k takes the largest probability first and, among equal ones, the lowest expert.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

from .decode_cpu import (
    DecodeWeights,
    cached_entry,
    gemv_into,
    mlp_into,
    mlp_weights,
    projection_weights,
    rms_norm_into,
)
from .numba_support import exp_nonpositive


@njit(fastmath=True, error_model="numpy", cache=True)
def _moe_token(
    x, norm_weight, eps, offset, router_weight, router_bias, top_k, normalize, activation,
    gates, gate_biases, ups, up_biases, downs, down_biases, probs, chosen, out,
):  # fmt: skip
    batch, width = x.shape
    n_experts = probs.shape[1]
    normed = np.empty_like(x)
    rms_norm_into(x, norm_weight, eps, offset, normed)
    gemv_into(router_weight, router_bias, normed, probs, 0)
    expert_out = np.empty((1, width), np.float32)
    picked = np.empty(top_k, np.float32)
    for row in range(batch):
        largest = probs[row].max()
        total = np.float32(0.0)
        for e in range(n_experts):
            probs[row, e] = exp_nonpositive(probs[row, e] - largest)
            total += probs[row, e]
        for e in range(n_experts):
            probs[row, e] /= total
        taken = np.zeros(n_experts, np.bool_)
        picked_total = np.float32(0.0)
        for j in range(top_k):
            best = -1
            for e in range(n_experts):
                if not taken[e] and (best < 0 or probs[row, e] > probs[row, best]):
                    best = e
            taken[best] = True
            chosen[row, j] = best
            picked[j] = probs[row, best]
            picked_total += picked[j]
        out[row] = 0.0
        for j in range(top_k):
            e = chosen[row, j]
            weight = picked[j] / picked_total if normalize else picked[j]
            mlp_into(
                normed[row : row + 1], activation,
                gates[e], gate_biases[e], ups[e], up_biases[e], downs[e], down_biases[e], expert_out,
            )  # fmt: skip
            for i in range(width):
                out[row, i] += weight * expert_out[0, i]


def _moe_weights(moe, norm) -> tuple | None:
    """The router's and every expert's views for `_moe_token`, each expert field as a tuple over experts."""
    router = projection_weights(norm, (moe.router,))
    experts = [mlp_weights(None, expert) for expert in moe.experts]
    if router is None or any(weights is None for weights in experts):
        return None
    held, norm_weight, eps, offset, (router_weight,), (router_bias,), _ = router
    fields = [tuple(expert[index] for expert in experts) for index in range(5, 11)]  # gate .. down bias
    tensors = held.tensors + [t for expert in experts for t in expert[0].tensors]
    return (DecodeWeights(tensors), norm_weight, eps, offset, router_weight, router_bias, experts[0][4], *fields)


def token_arguments(moe, norm, batch: int) -> tuple | None:
    """(DecodeWeights, the arguments of `_moe_token` between its input and its output) for b = `batch`
    rows, its router probabilities (b, E) and chosen experts (b, K) the last two; None where the
    weights cannot be viewed in place."""
    entry = cached_entry(moe, lambda m: _moe_weights(m, norm), norm)
    if entry is None:
        return None
    held, (norm_weight, eps, offset, router_weight, router_bias, activation, *experts) = entry
    probs = np.empty((batch, moe.n_experts), np.float32)
    chosen = np.empty((batch, moe.top_k), np.int64)
    router = (norm_weight, eps, offset, router_weight, router_bias, moe.top_k, moe.normalize_top_k, activation)
    return held, (*router, *experts, probs, chosen)


def moe_token(moe, x: torch.Tensor, norm) -> tuple | None:
    """The MoE of norm(x) for one token x (b, 1, d): (output (b, 1, d), router probabilities (b, E),
    chosen experts (b, K)), or None where the weights cannot be viewed in place."""
    batch = x.shape[0]
    entry = token_arguments(moe, norm, batch)
    if entry is None:
        return None
    arguments = entry[1]
    out = np.empty((batch, x.shape[-1]), np.float32)
    _moe_token(x.reshape(batch, -1).numpy(), *arguments, out)
    return torch.from_numpy(out).view(batch, 1, -1), torch.from_numpy(arguments[-2]), torch.from_numpy(arguments[-1])
