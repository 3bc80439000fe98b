"""Training loop: AdamW, warm-up + cosine schedule, exact resume, atomic checkpoints, one metrics
line per logged step (loss, grad norm, tokens/s, TFLOP/s and MFU, MoE routing), written to the
run's metrics.jsonl as it happens; synthetic tasks or local text.

Batches are pure functions of (seed, step, rank), so a resumed run sees exactly the batches an
uninterrupted one would. A non-finite loss or gradient norm stops the run before the optimizer
step (`TrainingDiverged`; the CLI exits 3), so the last checkpoint stays the last good one. The
run directory's layout and the rules for writing it are in run_dir.py.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import distributed, run_dir
from .analysis.flops import model_flops
from .analysis.params import build_meta
from .analysis.routing import routing_metrics, routing_report
from .checkpoint import CONFIG_FILE, WEIGHTS_FILE, CheckpointError, load_config, load_weights, read_weights
from .config import ConfigError, ModelConfig
from .data.synthetic import make_task
from .data.text import TextData
from .data.tokenizer import ByteTokenizer, load_tokenizer
from .evaluate import evaluate
from .metrics_log import MetricsLog, plot_loss, read_metrics
from .model import HybridLM
from .optimizer_state import read_optimizer_state
from .recipe import TrainConfig, dump_recipe, resolved_recipe
from .run_dir import METRICS_FILE, RECIPE_FILE, STATE_FILE
from .train_step import autocast, forward_backward, micro_batch_size

log = logging.getLogger(__name__)
LOSS_PLOT = "loss.png"
# settings a resumed run may change without changing the training itself
FREE_ON_RESUME = {
    "init_from",  # read at step 0 only: a resumed run's weights are its own
    "steps",
    "parallel",
    "log_every",
    "eval_every",
    "eval_batches",
    "save_every",
    "keep",
    "grad_accum",
    "compile",
    "gradient_checkpointing",
    "peak_tflops",
    "tensorboard",
}

__all__ = ["TrainConfig", "TrainResult", "TrainingDiverged", "train"]


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became non-finite; nothing was saved after the last good step."""


@dataclass
class TrainResult:
    step: int
    metrics: list[dict]
    final_eval: dict


def make_data(config: TrainConfig, tokenizer, model_vocab: int):
    """An object with batch(batch_size, seed, index, split) -> Batch, checked to fit the model's
    vocabulary and to produce a batch (so bad task settings fail before any work)."""
    if config.task == "text":  # no text_path: the default corpus (data/text.py)
        data, vocab = _TextTask(TextData.from_path(config.text_path, tokenizer), config.seq_len), tokenizer.vocab_size
    else:
        data = make_task(config.task, **config.task_settings)
        vocab = data.vocab_size
    if vocab > model_vocab:
        raise ConfigError(f"the {config.task} data uses {vocab} token ids but the model's vocab_size is {model_vocab}")
    data.batch(1, config.seed, 0, "train")
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
    resume: bool | str = False,
    tokenizer=None,
    stop_at: int | None = None,
    overwrite: bool = False,
    progress=None,
) -> TrainResult:
    """Train a model from `model_config` (from the weights of the checkpoint `config.init_from` when set:
    a fine-tune, with its tokenizer unless one is given), or continue the run saved in `out`.

    `resume`: True continues the run in `out` (which must ask for the saved model and settings;
    only `steps` and logging may change), "auto" continues it when there is one. `overwrite`
    replaces a run hybridlm wrote. `stop_at`: leave after that step (saving), as an interrupted
    run would. `progress(step, total)` is called after every step. Raises `TrainingDiverged` on a
    non-finite loss or gradient norm, before that step changes any weight."""
    world = distributed.setup()
    out = Path(out) if out is not None else None
    precision = autocast(config.precision, world.device)
    scaler = torch.amp.GradScaler("cuda") if config.precision == "fp16" else None
    micro_batch_size(config.batch_size, world.size, config.grad_accum)
    resuming = run_dir.check(out, resume, overwrite) if out is not None else False
    start_step = 0
    if resuming:
        start_step = _check_resumable(out, model_config, config)
        tokenizer = load_tokenizer(out)
    initial_weights = None
    if config.init_from and not resuming:  # a resumed fine-tune reads its weights from `out`
        initial_weights = _initial_weights(config.init_from, model_config, out)
        tokenizer = tokenizer if tokenizer is not None else load_tokenizer(config.init_from)
    tokenizer = tokenizer or ByteTokenizer()
    data = make_data(config, tokenizer, model_config.vocab_size)  # bad task settings fail before any write
    distributed.barrier()  # every rank has read the directory before the main one changes it
    if out is not None and world.is_main:
        run_dir.prepare(out, resuming)
    distributed.barrier()
    metrics_log = MetricsLog(
        out / METRICS_FILE if out is not None and world.is_main else None,
        start_step,
        out / "tensorboard" if out is not None and config.tensorboard else None,
    )
    if out is not None and world.is_main:
        run_dir.own(out, METRICS_FILE, *(["tensorboard"] if config.tensorboard else []))
        run_dir.write_owned(out, RECIPE_FILE, dump_recipe(resolved_recipe(model_config, config)))
    torch.manual_seed(config.seed)
    model = HybridLM(model_config)
    if start_step:
        load_weights(model, out / WEIGHTS_FILE)
    elif initial_weights is not None:  # a fine-tune: the checkpoint's weights, a new optimizer and schedule
        model.load_state_dict(initial_weights, strict=False)
        initial_weights = None  # not held for the whole run
        log.info("starting from the weights of %s", config.init_from)
    model = model.to(world.device)
    model.gradient_checkpointing = config.gradient_checkpointing
    parallel_model = distributed.wrap(model, world, config.parallel)  # before the optimizer: FSDP swaps params
    optimizer = build_optimizer(model, config)
    if start_step:
        distributed.load_optimizer_state(model, optimizer, read_optimizer_state(out))
    step_model = torch.compile(parallel_model) if config.compile else parallel_model
    log.info("training %s params on %s from step %d", f"{model.num_parameters():,}", config.task, start_step)
    metrics = (
        [record for record in read_metrics(out / METRICS_FILE) if record["step"] <= start_step] if start_step else []
    )

    def save_at(step: int) -> None:
        if out is not None:
            _save(model, optimizer, tokenizer, config, step, metrics, out, world)

    flops_per_token = None
    tokens_seen, clock = 0, time.perf_counter()
    try:
        for step in range(start_step, config.steps):
            model.train()
            batch = data.batch(config.batch_size, config.seed, step, "train")  # the global batch
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, config)
            optimizer.zero_grad(set_to_none=True)
            loss_sum, aux, answered = forward_backward(
                step_model, model, batch, world, config.grad_accum, precision, scaler
            )
            if scaler is not None:
                scaler.unscale_(optimizer)
            grad_norm = distributed.full_value(torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip))
            _check_finite(step + 1, loss_sum, grad_norm, out)
            if scaler is None:
                optimizer.step()
            else:  # fp16: skip a step whose scaled gradients overflowed, and adapt the scale
                scaler.step(optimizer)
                scaler.update()
            if config.compile and step == start_step:
                log_graph_breaks()
            tokens_seen += batch.inputs.numel()
            done = step + 1
            logs_now = done % config.log_every == 0 or done == config.steps
            if config.compile and step == start_step and not logs_now:  # that step compiled the model:
                tokens_seen, clock = 0, time.perf_counter()  # the first window's throughput starts after it
            if logs_now:
                if flops_per_token is None:
                    flops_per_token = model_flops(model_config, batch.inputs.shape[1]).training_per_token
                elapsed = max(time.perf_counter() - clock, 1e-9)
                record = {
                    "step": done,
                    "loss": distributed.global_sum(loss_sum).item() / answered,
                    "aux": distributed.global_sum(aux).item() / world.size,
                    "grad_norm": grad_norm,
                    "lr": learning_rate(step, config),
                    "tokens_per_s": tokens_seen / elapsed,
                    "tflops": tokens_seen * flops_per_token / elapsed / 1e12,
                    **(
                        {"mfu": tokens_seen * flops_per_token / elapsed / 1e12 / config.peak_tflops}
                        if config.peak_tflops
                        else {}
                    ),
                    **routing_summary(model),
                }
                if done == config.steps or (config.eval_every and done % config.eval_every == 0):
                    record.update(
                        evaluate(model, data, config.batch_size, config.eval_batches, config.seed, world.device)
                    )
                metrics.append(record)
                metrics_log.write(record)
                if world.is_main:
                    log.info(format_metrics(record))
                tokens_seen, clock = 0, time.perf_counter()
            if progress is not None and world.is_main:
                progress(done, config.steps)
            if config.save_every and done % config.save_every == 0 and done != config.steps:
                save_at(done)
            if stop_at is not None and done == stop_at:
                save_at(done)
                return TrainResult(step=done, metrics=metrics, final_eval={})
        if metrics and metrics[-1]["step"] == config.steps and "eval_loss" in metrics[-1]:
            final = {key: value for key, value in metrics[-1].items() if key.startswith("eval_")}
        else:  # resumed at the last step: nothing was trained now
            final = evaluate(model, data, config.batch_size, config.eval_batches, config.seed, world.device)
        if world.is_main:
            log.info("final %s", format_metrics(final))
        save_at(config.steps)
        if out is not None and world.is_main and plot_loss(metrics, out / LOSS_PLOT):
            run_dir.own(out, LOSS_PLOT)
        distributed.barrier()  # no rank leaves the process group while another still writes
        return TrainResult(step=config.steps, metrics=metrics, final_eval=final)
    finally:
        metrics_log.close()
        distributed.teardown()


def log_graph_breaks() -> None:
    """After the first compiled step: how many graphs torch.compile made and why it broke them."""
    from torch._dynamo.utils import counters

    breaks = dict(counters["graph_break"])
    log.info("torch.compile: %d graph break(s)%s", sum(breaks.values()), "".join(f"\n  {r}" for r in breaks))


def _check_finite(step: int, loss: torch.Tensor, grad_norm: float, out) -> None:
    """Stop before the optimizer step when any rank's loss or the gradient norm is not finite."""
    loss_ok = distributed.all_ranks(bool(torch.isfinite(loss.detach())))
    if loss_ok and math.isfinite(grad_norm):
        return
    quantity = "loss" if not loss_ok else f"gradient norm ({grad_norm})"
    kept = f"; the last checkpoint in {out} is intact" if out is not None and (Path(out) / STATE_FILE).exists() else ""
    raise TrainingDiverged(f"step {step}: non-finite {quantity}; stopped before updating the weights{kept}")


def _initial_weights(source, model_config: ModelConfig, out) -> dict[str, torch.Tensor]:
    """The tensors a fine-tune starts from, checked against `model_config` before any work."""
    source = Path(source)
    if not (source / CONFIG_FILE).is_file():
        raise CheckpointError(f"--init-from {source}: no checkpoint there (no {CONFIG_FILE})")
    if out is not None and source.resolve() == Path(out).resolve():
        raise ConfigError(f"the checkpoint {source} is also --out: the run would replace the weights it starts from")
    load_config(source)  # a folder of another format (a Hugging Face export) is named as such
    return read_weights(build_meta(model_config), source / WEIGHTS_FILE, expected_by="the model to train")


def _check_resumable(out, model_config: ModelConfig, config: TrainConfig) -> int:
    """The saved step, after checking the run asks for the saved model and settings."""
    saved = json.loads((Path(out) / STATE_FILE).read_text())
    if load_config(out) != model_config:
        raise CheckpointError(f"{out}: the saved model config differs from the requested one; drop --resume")
    planned = saved["train_config"]
    changed = sorted(
        k for k, v in dataclasses.asdict(config).items() if k not in FREE_ON_RESUME and planned.get(k) != v
    )
    if changed:
        raise CheckpointError(f"{out}: resuming needs the saved training settings; these differ: {', '.join(changed)}")
    if saved["step"] > config.steps:
        raise ConfigError(f"{out} is saved at step {saved['step']}, past --steps {config.steps}")
    return saved["step"]


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
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
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
        state = {
            "step": step,
            "train_config": dataclasses.asdict(config),
            "command": " ".join(sys.argv),
            "metrics": metrics,
        }
        run_dir.save_checkpoint(out, model.config, model_state, optimizer_state, tokenizer, state, config.keep)
    distributed.barrier()
