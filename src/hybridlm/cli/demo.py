"""`hybridlm demo`: the README's main job, a short CPU run over every tiny preset."""

from __future__ import annotations

import argparse
import time

from ..presets import preset_config, presets
from . import presets as presets_verb
from .common import format_table

HELP = "a short CPU run over every tiny preset: forward pass and timing"


def add_arguments(parser) -> None:
    parser.add_argument("--seq-len", type=int, default=256)


def run(args) -> None:
    import torch

    from ..model import HybridLM

    torch.manual_seed(0)
    presets_verb.run(argparse.Namespace(size="tiny", json=False, markdown=False))
    print(f"\nforward pass of every tiny preset, batch 1 x {args.seq_len} tokens (fp32, CPU):")
    rows = []
    for name in presets():
        model = HybridLM(preset_config(name, "tiny")).eval()
        tokens = torch.randint(0, 256, (1, args.seq_len))
        with torch.no_grad():
            model(tokens)  # warm-up
            start = time.perf_counter()
            logits = model(tokens)
            elapsed = time.perf_counter() - start
        rows.append([name, f"{elapsed * 1e3:.1f} ms", f"{args.seq_len / elapsed:,.0f}", tuple(logits.shape)])
    print(format_table(["preset", "forward", "tokens/s", "logits"], rows))
