"""The README's main job: a few-minute CPU run that shows the hybrid thesis.

1. Cost: the inference cache of the published shapes against context length (computed from their
   configs): attention's KV cache grows with N, an SSM's state does not, a hybrid with one
   attention layer in eight pays an eighth of the KV.
2. Recall: four small 2-layer models trained for the same steps on multi-query associative recall
   (Zoology's MQAR): attention only, RG-LRU only (Hawk-like), and two hybrid layouts, RG-LRU then
   attention (Griffin-like) and attention then RG-LRU, each with its cache at 8K and 256K tokens.
   The SSM's fixed state cannot hold the key-value pairs; one attention layer can. Every attention
   layer here carries a depthwise causal conv of width 3 on q, k and v (the Based / Primer recipe:
   plain 2-layer attention needs several times the steps on this task); the RG-LRU block has its
   own width-4 conv, as in Griffin.
3. Exactness: the hybrid's cached decoding reproduces its full forward pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .analysis.cache_size import cache_bytes
from .config import ModelConfig
from .model import HybridLM
from .presets import preset_config
from .train import TrainConfig, train

COST_PRESETS = ("transformer", "jamba", "griffin", "mamba")
COST_LENGTHS = (4096, 32768, 262144)
RECALL_MODELS = {
    "attention + short conv": "A A",
    "SSM: RG-LRU": "R R",
    "hybrid, SSM first": "R A",
    "hybrid, attention first": "A R",
}
RECALL_CACHE_LENGTHS = (8192, 262144)  # the recall models' cache is also shown at these contexts
FULL = {"steps": 400, "seq_len": 64, "n_pairs": 8}
QUICK = {"steps": 200, "seq_len": 32, "n_pairs": 4}  # under a minute on 2 cores, the same gap


@dataclass
class RecallRow:
    name: str
    pattern: str
    params: int
    state_bytes: int  # inference cache of one sequence at the task's length
    long_cache_bytes: dict  # context length -> cache bytes of one sequence (RECALL_CACHE_LENGTHS)
    accuracy: float
    seconds: float


def cost_table(presets=COST_PRESETS, lengths=COST_LENGTHS, dtype: str = "bfloat16") -> list[dict]:
    """Cache bytes of one sequence for each paper preset at each context length."""
    rows = []
    for name in presets:
        config = preset_config(name, "paper")
        rows.append(
            {"preset": name, **{n: sum(row.total for row in cache_bytes(config, n, 1, dtype)) for n in lengths}}
        )
    return rows


def recall_config(pattern: str) -> ModelConfig:
    """2 layers, d = 64, no MLP, as in Zoology's MQAR sweeps; attention with a short conv (Based recipe)."""
    return ModelConfig(
        pattern=pattern, d_model=64, n_heads=2, vocab_size=264, attention={"short_conv": 3}, rglru={"n_heads": 2}
    )


def recall_experiment(steps: int = 400, seq_len: int = 64, n_pairs: int = 8, seed: int = 0, progress=None):
    """Train each model of RECALL_MODELS on MQAR for `steps` and measure held-out accuracy."""
    task = {"vocab_size": 256, "seq_len": seq_len, "n_pairs": n_pairs}
    settings = TrainConfig(
        task="mqar",
        task_settings=task,
        steps=steps,
        batch_size=64,
        lr=3e-3,
        warmup_steps=min(30, steps),
        log_every=max(steps // 4, 1),
        eval_batches=8,
        seed=seed,
    )
    rows = []
    for name, pattern in RECALL_MODELS.items():
        config = recall_config(pattern)
        start = time.perf_counter()
        result = train(config, settings)
        state = _cache(config, seq_len)
        rows.append(
            RecallRow(
                name,
                pattern,
                HybridLM(config).num_parameters(),
                state,
                {n: _cache(config, n) for n in RECALL_CACHE_LENGTHS},
                result.final_eval["eval_accuracy"],
                time.perf_counter() - start,
            )
        )
        if progress is not None:
            progress(rows[-1])
    return rows


def _cache(config: ModelConfig, length: int) -> int:
    """Inference cache bytes of one float32 sequence of `length` tokens."""
    return sum(row.total for row in cache_bytes(config, length, 1, "float32"))


@torch.no_grad()
def decoding_matches_forward(pattern: str = "(RF RF LF)*2", length: int = 96) -> float:
    """Max |logit difference| between token-by-token decoding and one full forward pass."""
    torch.manual_seed(0)
    model = HybridLM(preset_config("griffin", "tiny").with_overrides({"pattern": pattern})).eval()
    tokens = torch.randint(0, 256, (1, length))
    cache = model.allocate_cache(1)
    steps = torch.cat([model(tokens[:, t : t + 1], cache=cache) for t in range(length)], dim=1)
    return (model(tokens) - steps).abs().max().item()
