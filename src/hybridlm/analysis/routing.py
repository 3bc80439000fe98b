"""MoE routing statistics of the last forward pass: per-expert load, router entropy, collapse warning.

Every `E` sub-layer records `RouterStats` (layers/moe.py) on each forward: the load f_i (fraction of
tokens whose top-K holds expert i; sum f_i = K), the mean router probability P_i, the mean router
entropy and the aux value E * sum f_i P_i (K when balanced, E under full collapse). From them:

    load_entropy   = H(f / K) / log E     1 when every expert gets K/E of the tokens, 0 when one takes all
    router_entropy = mean H(G(x)) / log E 1 for a uniform router, 0 for a one-hot router
    max_load_ratio = max_i f_i / (K / E)  1 when balanced, E / K at most
    dead_experts   = #{i: f_i = 0}
A layer is flagged as collapsing when load_entropy < `min_load_entropy` (default 0.5) or half or
more of its experts receive no token; a warning is logged. A training loop logs `routing_metrics`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from ..model import HybridLM

logger = logging.getLogger(__name__)
MIN_LOAD_ENTROPY = 0.5


@dataclass
class LayerRouting:
    index: int
    n_experts: int
    top_k: int
    load: list[float]  # f_i, sums to K
    mean_prob: list[float]  # P_i
    aux: float  # E * sum f_i P_i
    load_entropy: float
    router_entropy: float
    max_load_ratio: float
    dead_experts: int
    collapsed: bool


def layer_routing(index: int, stats, top_k: int, min_load_entropy: float = MIN_LOAD_ENTROPY) -> LayerRouting:
    """Summarise one layer's `RouterStats`."""
    load = stats.load.detach().double()
    n_experts = load.numel()
    share = load / top_k  # sums to 1
    positive = share[share > 0]
    load_entropy = float(-(positive * positive.log()).sum() / math.log(n_experts)) if n_experts > 1 else 1.0
    dead = int((load == 0).sum())
    collapsed = load_entropy < min_load_entropy or 2 * dead >= n_experts
    return LayerRouting(
        index=index,
        n_experts=n_experts,
        top_k=top_k,
        load=load.tolist(),
        mean_prob=stats.mean_prob.detach().double().tolist(),
        aux=float(stats.aux.detach()),
        load_entropy=load_entropy,
        router_entropy=float(stats.entropy.detach()) / math.log(n_experts) if n_experts > 1 else 1.0,
        max_load_ratio=float(load.max() / (top_k / n_experts)),
        dead_experts=dead,
        collapsed=collapsed,
    )


def routing_report(model: HybridLM, min_load_entropy: float = MIN_LOAD_ENTROPY) -> list[LayerRouting]:
    """One `LayerRouting` per MoE sub-layer, from the stats of the model's last forward pass."""
    rows = []
    for index, layer in enumerate(model.layers):
        if not hasattr(layer.mixer, "stats"):  # the routed sub-layers (MoE) keep router statistics
            continue
        stats = layer.mixer.stats
        if stats is None:
            raise ValueError("no router statistics yet: run a forward pass of the model first")
        row = layer_routing(index, stats, layer.mixer.top_k, min_load_entropy)
        if row.collapsed:
            logger.warning(
                "MoE sub-layer %d is collapsing: load entropy %.2f, %d of %d experts unused, busiest %.1fx its share",
                index,
                row.load_entropy,
                row.dead_experts,
                row.n_experts,
                row.max_load_ratio,
            )
        rows.append(row)
    return rows


def routing_metrics(rows: list[LayerRouting]) -> dict[str, float]:
    """Flat scalars for a training log: per layer and the worst layer."""
    metrics: dict[str, float] = {}
    for row in rows:
        prefix = f"moe/{row.index}"
        metrics[f"{prefix}/load_entropy"] = row.load_entropy
        metrics[f"{prefix}/router_entropy"] = row.router_entropy
        metrics[f"{prefix}/max_load_ratio"] = row.max_load_ratio
        metrics[f"{prefix}/aux"] = row.aux
    if rows:
        metrics["moe/min_load_entropy"] = min(row.load_entropy for row in rows)
        metrics["moe/collapsed_layers"] = float(sum(row.collapsed for row in rows))
    return metrics


def route(model: HybridLM, input_ids: torch.Tensor) -> list[LayerRouting]:
    """Forward input_ids (no gradients) and return the routing report."""
    with torch.no_grad():
        model(input_ids)
    return routing_report(model)
