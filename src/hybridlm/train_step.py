"""One optimizer step's forward and backward: the global batch split over ranks and micro-steps,
the loss normalised by the global count of answered tokens, and the precision it runs in.

`batch_size` is the global batch: every rank draws the same global batch (a pure function of seed
and step) and takes its rows, then splits them into `grad_accum` micro-batches, so 1 process and
N processes train on the same sequences. Each micro-batch's summed token loss is divided by the
answered tokens of the whole global batch (and multiplied by the world size, which the gradient
all-reduce divides by again): the accumulated gradient is that of the global mean loss, whatever
the split. The MoE balance loss is a mean over micro-batches and ranks.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from . import distributed
from .config import ConfigError
from .data.synthetic import IGNORE

log = logging.getLogger(__name__)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# measured on this kind of CPU: bf16 matrix products run 50-500x slower than fp32 (no bf16 units)
CPU_BF16_REASON = "bf16/fp16 matrix products on this CPU run 50-500x slower than fp32 (no half-precision units)"


def micro_batch_size(batch_size: int, world_size: int, grad_accum: int) -> int:
    """Rows per micro-batch; refuses a global batch that does not split evenly."""
    if batch_size % (world_size * grad_accum):
        raise ConfigError(
            f"batch_size {batch_size} does not split over {world_size} rank(s) x {grad_accum} micro-step(s); "
            f"use a multiple of {world_size * grad_accum}"
        )
    return batch_size // (world_size * grad_accum)


def autocast(precision: str, device: torch.device):
    """The autocast context of `precision` ("auto": bf16 on CUDA, fp32 elsewhere). SSM states and scan
    accumulators stay fp32 inside it (the mixers compute them in fp32 explicitly)."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return nullcontext()
    if device.type != "cuda":
        raise ConfigError(f"--precision {precision} on {device.type}: {CPU_BF16_REASON}; use fp32")
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def forward_backward(parallel_model, model, batch, world, grad_accum: int, precision_context, scaler=None):
    """Forward and backward over this rank's micro-batches of the global `batch`.

    Returns (summed token loss on this rank, mean balance loss on this rank, answered tokens of
    the global batch); gradients are synchronised across ranks on the last micro-step only."""
    answered = max(int((batch.targets != IGNORE).sum()), 1)
    per_rank = batch.inputs.shape[0] // world.size
    rows = slice(world.rank * per_rank, (world.rank + 1) * per_rank)
    inputs, targets = batch.inputs[rows].to(world.device), batch.targets[rows].to(world.device)
    loss_sum = torch.zeros((), device=world.device)
    aux_sum = torch.zeros((), device=world.device)
    for micro_inputs, micro_targets, index in zip(
        inputs.chunk(grad_accum), targets.chunk(grad_accum), range(grad_accum)
    ):
        with distributed.gradient_sync(parallel_model, index == grad_accum - 1), precision_context:
            logits = parallel_model(micro_inputs)
            loss = F.cross_entropy(
                logits.float().flatten(0, 1), micro_targets.flatten(), ignore_index=IGNORE, reduction="sum"
            )
            aux = model.aux_loss() / grad_accum
            objective = loss * (world.size / answered) + aux
            (scaler.scale(objective) if scaler is not None else objective).backward()
        loss_sum += loss.detach()
        aux_sum += aux.detach()
    return loss_sum, aux_sum, answered
