"""Multi-device training through torch.distributed, applied from outside the single-device model.

Launched with `torchrun --nproc_per_node N -m hybridlm.cli train ...`: each process reads RANK,
WORLD_SIZE and LOCAL_RANK from the environment. DDP replicates the model; FSDP2 (`fully_shard`, one
unit per sub-layer) shards parameters, gradients and optimizer state. Both run on CPU (gloo) and
CUDA (nccl). Checkpoints hold full (unsharded) state dicts keyed by parameter name, so a run can
resume under another strategy or world size.
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str | None = None) -> World:
    """Join the process group when launched by torchrun; a single process otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    chosen = torch.device(device)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
        log.info("rank %d of %d on %s", dist.get_rank(), size, chosen)
    rank = dist.get_rank() if dist.is_initialized() else 0
    return World(rank=rank, size=size, local_rank=local_rank, device=chosen)


def wrap(model: nn.Module, world: World, strategy: str = "ddp") -> nn.Module:
    """Apply data parallelism: 'ddp' or 'fsdp' (in place: the model's parameters become shards).

    Build the optimizer after this call, from `model.parameters()`."""
    if world.size == 1:
        return model
    if strategy == "ddp":
        device_ids = [world.device.index] if world.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in model.layers:
            fully_shard(layer)
        fully_shard(model)
        return model
    raise ValueError(f"unknown parallel strategy {strategy!r}: choose ddp or fsdp")


def full_state_dicts(model: nn.Module, optimizer) -> tuple[dict, dict]:
    """Full model and optimizer state dicts (on CPU, keyed by parameter name); call on every rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options), get_optimizer_state_dict(model, optimizer, options=options)


def load_optimizer_state(model: nn.Module, optimizer, state: dict) -> None:
    """Load a full optimizer state dict from `full_state_dicts` into a (possibly sharded) optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))


def full_value(tensor: torch.Tensor) -> float:
    """A scalar that may be a sharded DTensor (FSDP's gradient norm), as a float."""
    return float(tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor)


def gradient_sync(model: nn.Module, enabled: bool):
    """A context in which backward does (enabled) or does not (a non-final micro-step) reduce gradients."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return nullcontext() if enabled else model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(enabled)
    return nullcontext()


def global_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of `tensor` over all ranks (itself without a process group)."""
    if not dist.is_initialized():
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total)
    return total


def all_ranks(flag: bool) -> bool:
    """True when `flag` holds on every rank (one all-reduce; the flag itself without a process group)."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor([0.0 if flag else 1.0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value.item() == 0.0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
