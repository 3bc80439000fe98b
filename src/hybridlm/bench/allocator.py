"""A/B of glibc's allocator settings on a training step (runtime.tune_allocator).

The thresholds must be set before the big blocks are first allocated, so each setting runs in a
fresh child process: one with glibc's defaults (HYBRIDLM_ALLOCATOR=default, MALLOC_*_ removed
from its environment), one with `tune_allocator()` applied. The child prints its best step time
and the system (kernel) CPU seconds it spent, which is where page zeroing shows up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from .timing import Row

CHILD = "from hybridlm.bench.allocator import child_main; child_main()"


def child_main() -> None:
    """Entry point of the child: time a few training steps of the small Mamba preset."""
    import resource

    import torch

    from ..model import HybridLM
    from ..presets import preset_config
    from ..runtime import tune_allocator
    from .timing import best_time
    from .training import training_step

    options = json.loads(sys.argv[1])
    tune_allocator()
    torch.set_num_threads(options["threads"])
    torch.manual_seed(0)
    config = preset_config(options["preset"], "small")
    model = HybridLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, config.vocab_size, (options["batch"], options["seq_len"] + 1))
    before = resource.getrusage(resource.RUSAGE_SELF)
    seconds = best_time(lambda: training_step(model, optimizer, tokens), repeats=options["repeats"])
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"step_s": seconds, "system_s": after.ru_stime - before.ru_stime}))


def allocator_rows(preset: str = "mamba", batch: int = 4, seq_len: int = 256, repeats: int = 2, threads: int = 1):
    options = json.dumps({"preset": preset, "batch": batch, "seq_len": seq_len, "repeats": repeats, "threads": threads})
    results = {}
    for setting in ("default", "tuned"):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        env["HYBRIDLM_ALLOCATOR"] = setting
        output = subprocess.run(
            [sys.executable, "-c", CHILD, options], env=env, capture_output=True, text=True, check=True
        ).stdout
        results[setting] = json.loads(output.strip().splitlines()[-1])
    notes = {f"system_s_{setting}": result["system_s"] for setting, result in results.items()}
    name = f"{preset} small train step {batch}x{seq_len}, mallopt thresholds"
    tuned, default = results["tuned"]["step_s"], results["default"]["step_s"]
    return [Row("allocator", name, tuned, default, "glibc defaults", batch * seq_len, notes)]
