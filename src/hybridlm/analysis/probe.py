"""Run a model once and keep what every mixer saw and returned (the input of mixing and memory analyses).

Glossary: N tokens, d model width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layers.context import Context
from ..model import HybridLM


@dataclass
class SublayerCall:
    index: int  # sub-layer index in the pattern
    char: str
    module: torch.nn.Module  # the sub-layer's mixer (or FFN)
    x: torch.Tensor  # (1, N, d) the mixer's input (after the pre-norm, when the sub-layer has one)
    ctx: Context
    output: torch.Tensor  # (1, N, d) what the mixer returned


def record_sublayers(model: HybridLM, input_ids: torch.Tensor, row: int = 0) -> list[SublayerCall]:
    """Forward row `row` of input_ids (B, N) without a cache; one `SublayerCall` per sub-layer."""
    if input_ids.dim() != 2 or not 0 <= row < input_ids.shape[0]:
        raise ValueError(f"input_ids must be (B, N) with row < B; got {tuple(input_ids.shape)} and row {row}")
    calls: list[SublayerCall] = []
    handles = []
    for index, layer in enumerate(model.layers):

        def hook(module, args, output, index=index, char=layer.char):
            calls.append(SublayerCall(index, char, module, args[0], args[2], output))

        handles.append(layer.mixer.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(input_ids[row : row + 1])
    finally:
        for handle in handles:
            handle.remove()
    return calls
