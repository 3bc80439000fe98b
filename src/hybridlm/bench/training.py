"""Training throughput of the presets: tokens/s of a full step (forward, loss, backward, AdamW) and
model-FLOPs utilisation against the fp32 matmul peak measured in the same run.

MFU = (training FLOPs per token from `analysis.flops.model_flops`) x tokens/s / peak. The FLOP
count is the usual 3 x forward with the recurrences' elementwise work included; the peak is a
large square GEMM, so only matmul-shaped work can reach it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..analysis.flops import model_flops
from ..model import HybridLM
from ..ops.dispatch import kernels
from ..presets import preset_config
from .timing import Row, best_time, matmul_peak

TRAINING_PRESETS = ("transformer", "mamba2", "mamba", "jamba", "griffin", "stripedhyena")
# mixers whose training runs a numba kernel, so timing the reference scans too is worth it: a fact of
# ops/dispatch.py's kernels, not of the families (a new family's kernel is added here when written)
SSM_SCANS = {"M", "R"}


def training_step(model: HybridLM, optimizer, tokens: torch.Tensor):
    """One step of next-token training on `tokens` (B, N + 1)."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    logits = model(inputs)
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten()) + model.aux_loss()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def training_rows(presets=TRAINING_PRESETS, size: str = "small", batch: int = 4, seq_len: int = 256, repeats: int = 2):
    peak = matmul_peak()
    rows = []
    for preset in presets:
        torch.manual_seed(0)
        config = preset_config(preset, size)
        model = HybridLM(config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        tokens = torch.randint(0, config.vocab_size, (batch, seq_len + 1))

        ours_s = best_time(_step(model, optimizer, tokens, ""), repeats)
        has_kernel = SSM_SCANS & set(config.chars)
        reference_s = best_time(_step(model, optimizer, tokens, "reference"), 1) if has_kernel else None
        tokens_per_s = batch * seq_len / ours_s
        flops_per_token = model_flops(config, seq_len).training_per_token
        notes = {
            "tokens_per_s": tokens_per_s,
            "mfu": flops_per_token * tokens_per_s / peak,
            "training_gflops_per_token": flops_per_token / 1e9,
            "peak_gflops": peak / 1e9,
            "params_m": model.num_parameters() / 1e6,
        }
        name = f"{preset} {size} train step {batch}x{seq_len}"
        rows.append(Row("training", name, ours_s, reference_s, "reference scans", batch * seq_len, notes))
    return rows


def _step(model, optimizer, tokens, choice: str):
    def run():
        with kernels(choice):
            training_step(model, optimizer, tokens)

    return run
