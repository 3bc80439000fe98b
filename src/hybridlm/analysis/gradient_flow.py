"""Gradient flow through depth: the norm of dL/dx_l at the input of every sub-layer.

x_l is the residual stream entering sub-layer l (the input of its pre-norm). A shared block `S`
does not add to the stream (its output t joins only the next mixer's input, x + t), so the mixer
after it reports the same x as the `S`. L is the mean next-token cross-entropy over the batch.
Attention layers acting as highways between SSM stretches show as steps in the curve.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..layers.registry import sublayer_names
from ..model import HybridLM


@dataclass
class GradientRow:
    index: int  # sub-layer index; len(layers) is the final norm's input
    char: str
    kind: str
    grad_norm: float  # ||dL/dx_l|| over the whole batch (Frobenius)
    per_token: float  # grad_norm / sqrt(B * N): the RMS over token positions


def next_token_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting input_ids[:, t + 1] from logits[:, t]."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), input_ids[:, 1:].reshape(-1))


def gradient_flow(model: HybridLM, input_ids: torch.Tensor) -> tuple[float, list[GradientRow]]:
    """(loss, one row per sub-layer plus the final norm's input) for a batch input_ids (B, N), N >= 2.

    Parameter gradients are not kept: only the gradients of the residual stream are recorded.
    The model is run in eval mode (no gradient checkpointing re-entry) and restored afterwards.
    """
    if input_ids.dim() != 2 or input_ids.shape[1] < 2:
        raise ValueError("input_ids must be (B, N) with N >= 2 to form a next-token loss")
    was_training = model.training
    model.eval()
    inputs: list[torch.Tensor] = []

    def keep_input(module, args, after_shared=False):
        inputs.append(inputs[-1] if after_shared else args[0])  # after `S`, args[0] is x + t, not the stream

    handles = []
    for index, layer in enumerate(model.layers):
        after_shared = index > 0 and model.layers[index - 1].feeds_next_mixer
        handles.append(layer.register_forward_pre_hook(functools.partial(keep_input, after_shared=after_shared)))
    handles.append(model.final_norm.register_forward_pre_hook(keep_input))
    try:
        with torch.enable_grad():
            logits = model(input_ids)
            loss = next_token_loss(logits, input_ids)
            grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    tokens = input_ids.numel() ** 0.5
    chars = model.config.chars + "N"
    rows = []
    for index, (char, grad) in enumerate(zip(chars, grads)):
        norm = 0.0 if grad is None else float(grad.float().norm())
        kind = "final_norm" if index == len(chars) - 1 else sublayer_names()[char]
        rows.append(GradientRow(index, "" if index == len(chars) - 1 else char, kind, norm, norm / tokens))
    return float(loss.detach()), rows
