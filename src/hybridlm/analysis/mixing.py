"""Token-mixing matrices of a model on a given input: the "attention = SSM" duality made visible.

Every mixer maps its input sequence through an N x N lower-triangular matrix per head or channel
(its `mixing_operators` hook; layers/mixing.py). `layer_mixing` returns the operators (with readouts, for exact checks);
`mixing_matrices` the (N, N) matrix of each chosen layer, averaged over heads/channels or for one
of them; `mixing_summary` two numbers per matrix: how far back it reaches and how much stays local.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layers.mixing import MixingOperator
from ..layers.registry import mixer_chars
from ..model import HybridLM
from .probe import record_sublayers


@dataclass
class LayerMixing:
    index: int  # sub-layer index (the `#` column of `hybridlm inspect`)
    char: str
    kind: str
    operator: MixingOperator
    output: torch.Tensor  # (1, N, d) the mixer's own output, which readout(M values) reproduces


def layer_mixing(
    model: HybridLM, input_ids: torch.Tensor, layers: list[int] | None = None, row: int = 0
) -> list[LayerMixing]:
    """Mixing operators of every mixer sub-layer (or those in `layers`) for row `row` of input_ids."""
    chars = model.config.chars
    mixer_indices = [index for index, char in enumerate(chars) if char in mixer_chars()]
    chosen = mixer_indices if layers is None else list(layers)
    for index in chosen:
        if index not in mixer_indices:
            raise ValueError(f"sub-layer {index} is not a mixer (mixers: {', '.join(str(i) for i in mixer_indices)})")
    calls = {call.index: call for call in record_sublayers(model, input_ids, row)}
    result = []
    with torch.no_grad():
        for index in chosen:
            call = calls[index]
            for operator in call.module.mixing_operators(call.x, call.ctx):
                result.append(LayerMixing(index, call.char, operator.kind, operator, call.output))
    return result


def mixing_matrices(
    model: HybridLM,
    input_ids: torch.Tensor,
    layers: list[int] | None = None,
    group: int | None = None,
    row: int = 0,
) -> list[tuple[LayerMixing, torch.Tensor]]:
    """(layer, (N, N) float32 matrix) pairs: the mean over heads/channels, or head/channel `group`."""
    pairs = []
    with torch.no_grad():
        for mixing in layer_mixing(model, input_ids, layers, row):
            pairs.append((mixing, mixing.operator.reduced(group).float()))
    return pairs


def mixing_summary(matrix: torch.Tensor) -> dict:
    """mean_distance: sum |M[t,s]| (t - s) / sum |M|, in tokens; local_share: share of |M| within 4 tokens."""
    length = matrix.shape[-1]
    positions = torch.arange(length, dtype=torch.float64)
    distance = (positions.unsqueeze(1) - positions.unsqueeze(0)).clamp(min=0)
    magnitude = matrix.double().abs()
    total = magnitude.sum().clamp_min(1e-300)
    return {
        "mean_distance": float((magnitude * distance).sum() / total),
        "local_share": float(magnitude[distance < 4].sum() / total),
    }
