"""Training loop: AdamW, warm-up + cosine schedule, exact resume, atomic checkpoints, one metrics
line per logged step (loss, grad norm, tokens/s, MoE routing), synthetic tasks or local text.

Batches are pure functions of (seed, step, rank), so a resumed run sees exactly the batches an
uninterrupted one would. A checkpoint directory describes itself: config.json, model.safetensors,
tokenizer (when not bytes), trainer_state.json (step, settings, command, metrics), optimizer.pt.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from . import distributed
from .analysis.routing import routing_metrics, routing_report
from .checkpoint import CheckpointError, load_config, load_weights, save_state
from .config import ConfigError, ModelConfig
from .data.synthetic import IGNORE, make_task
from .data.text import TextData
from .data.tokenizer import ByteTokenizer, load_tokenizer
from .evaluate import evaluate
from .model import HybridLM

log = logging.getLogger(__name__)
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
# settings a resumed run may change without changing the training itself
FREE_ON_RESUME = {
    "steps",
    "parallel",
    "log_every",
    "eval_every",
    "eval_batches",
    "save_every",
    "gradient_checkpointing",
}


@dataclass
class TrainConfig:
    task: str = "mqar"  # a synthetic task (mqar, passkey, copy, induction) or "text"
    task_settings: dict = field(default_factory=dict)  # e.g. {"seq_len": 64, "n_pairs": 8}
    text_path: str | None = None  # file or directory of .txt/.md for task "text"
    seq_len: int = 256  # for text
    steps: int = 200
    batch_size: int = 32
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # 0: only at the end
    eval_batches: int = 8
    save_every: int = 0  # 0: only at the end (when an output directory is given)
    parallel: str = "ddp"  # under torchrun: ddp or fsdp
    gradient_checkpointing: bool = False


@dataclass
class TrainResult:
    step: int
    metrics: list[dict]
    final_eval: dict


def make_data(config: TrainConfig, tokenizer, model_vocab: int):
    """An object with batch(batch_size, seed, index, split) -> Batch, checked to fit the model's vocabulary."""
    if config.task == "text":
        if not config.text_path:
            raise ConfigError("task 'text' needs --data PATH (a text file or a directory of .txt files)")
        data, vocab = _TextTask(TextData.from_path(config.text_path, tokenizer), config.seq_len), tokenizer.vocab_size
    else:
        data = make_task(config.task, **config.task_settings)
        vocab = data.vocab_size
    if vocab > model_vocab:
        raise ConfigError(f"the {config.task} data uses {vocab} token ids but the model's vocab_size is {model_vocab}")
    return data


@dataclass
class _TextTask:
    text: TextData
    seq_len: int

    def batch(self, batch_size, seed, index, split="train"):
        return self.text.batch(batch_size, self.seq_len, seed, index, split)


def train(
    model_config: ModelConfig,
    config: TrainConfig,
    out=None,
    resume: bool = False,
    tokenizer=None,
    stop_at: int | None = None,
) -> TrainResult:
    """Train a model from `model_config` (or continue the run saved in `out` when `resume`).

    A resumed run must ask for the saved model and training settings (only `steps` may grow).
    `stop_at`: leave after that step (saving when `out` is given), as an interrupted run would."""
    world = distributed.setup()
    torch.manual_seed(config.seed)
    tokenizer = tokenizer or ByteTokenizer()
    start_step, metrics = 0, []
    if resume and out and (Path(out) / STATE_FILE).exists():
        start_step, metrics = _check_resumable(out, model_config, config)
        tokenizer = load_tokenizer(out)
    model = HybridLM(model_config).to(world.device)
    if start_step:
        load_weights(model, Path(out) / "model.safetensors")
    model.gradient_checkpointing = config.gradient_checkpointing
    parallel_model = distributed.wrap(model, world, config.parallel)  # before the optimizer: FSDP swaps params
    optimizer = build_optimizer(model, config)
    if start_step:
        saved_state = torch.load(Path(out) / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
        distributed.load_optimizer_state(model, optimizer, saved_state)
    data = make_data(config, tokenizer, model_config.vocab_size)
    # bf16 autocast on CUDA only: this kind of CPU has no bf16 matmul units (50-500x slower than fp32)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if world.device.type == "cuda" else nullcontext()
    log.info("training %s params on %s from step %d", f"{model.num_parameters():,}", config.task, start_step)

    def save_at(step: int) -> None:
        if out:
            _save(model, optimizer, tokenizer, config, step, metrics, out, world)

    tokens_seen, clock = 0, time.perf_counter()
    for step in range(start_step, config.steps):
        model.train()
        batch = data.batch(config.batch_size, config.seed, step * world.size + world.rank, "train")
        inputs, targets = batch.inputs.to(world.device), batch.targets.to(world.device)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        with autocast:
            logits = parallel_model(inputs)
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
            aux = model.aux_loss()
        optimizer.zero_grad(set_to_none=True)
        (loss + aux).backward()
        grad_norm = distributed.full_value(torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip))
        optimizer.step()
        tokens_seen += inputs.numel() * world.size
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            elapsed = time.perf_counter() - clock
            record = {
                "step": done,
                "loss": loss.item(),
                "aux": aux.item(),
                "grad_norm": grad_norm,
                "lr": learning_rate(step, config),
                "tokens_per_s": tokens_seen / max(elapsed, 1e-9),
                **routing_summary(model),
            }
            if config.eval_every and done % config.eval_every == 0 and done != config.steps:
                record.update(evaluate(model, data, config.batch_size, config.eval_batches, config.seed, world.device))
            metrics.append(record)
            if world.is_main:
                log.info(format_metrics(record))
            tokens_seen, clock = 0, time.perf_counter()
        if config.save_every and done % config.save_every == 0 and done != config.steps:
            save_at(done)
        if stop_at is not None and done == stop_at:
            save_at(done)
            distributed.teardown()
            return TrainResult(step=done, metrics=metrics, final_eval={})
    final = evaluate(model, data, config.batch_size, config.eval_batches, config.seed, world.device)
    if metrics:
        metrics[-1].update(final)
    if world.is_main:
        log.info("final %s", format_metrics(final))
    save_at(config.steps)
    distributed.teardown()
    return TrainResult(step=config.steps, metrics=metrics, final_eval=final)


def _check_resumable(out, model_config: ModelConfig, config: TrainConfig) -> tuple[int, list]:
    """The saved step and metrics, after checking the run asks for the saved model and settings."""
    saved = json.loads((Path(out) / STATE_FILE).read_text())
    if load_config(out) != model_config:
        raise CheckpointError(f"{out}: the saved model config differs from the requested one; drop --resume")
    planned = saved["train_config"]
    changed = sorted(
        k for k, v in dataclasses.asdict(config).items() if k not in FREE_ON_RESUME and planned.get(k) != v
    )
    if changed:
        raise CheckpointError(f"{out}: resuming needs the saved training settings; these differ: {', '.join(changed)}")
    return saved["step"], saved.get("metrics", [])


def build_optimizer(model: HybridLM, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only, never on norms, biases or SSM dynamics (A, D, dt, poles)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        skip = parameter.ndim < 2 or name in model.no_weight_decay  # tagged by its mixer (layers/base.py)
        (no_decay if skip else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95))


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio * lr at the last step."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def routing_summary(model: HybridLM) -> dict:
    """The worst MoE layer's routing (load entropy, collapsed layers); logs a warning on collapse."""
    if not any(hasattr(layer.mixer, "stats") for layer in model.layers):  # no routed (MoE) sub-layer
        return {}
    metrics = routing_metrics(routing_report(model))
    return {key: value for key, value in metrics.items() if key.count("/") == 1}


def format_metrics(record: dict) -> str:
    parts = []
    for key, value in record.items():
        parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    return " | ".join(parts)


def _save(model, optimizer, tokenizer, config, step, metrics, out, world) -> None:
    """Every rank gathers the full state (FSDP needs all of them); rank 0 writes it atomically."""
    model_state, optimizer_state = distributed.full_state_dicts(model, optimizer)
    if world.is_main:
        buffer = io.BytesIO()
        torch.save(optimizer_state, buffer)
        state = {
            "step": step,
            "train_config": dataclasses.asdict(config),
            "command": " ".join(sys.argv),
            "metrics": metrics,
        }
        save_state(
            model.config,
            model_state,
            out,
            tokenizer=tokenizer,
            extra_files={STATE_FILE: json.dumps(state, indent=2) + "\n", OPTIMIZER_FILE: buffer.getvalue()},
        )
    distributed.barrier()
