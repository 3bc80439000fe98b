"""What `--compile` buys: a training step and a decoding token under torch.compile (inductor) against
the same eager model, and how long the first compiled call takes.

Both sides hold the same weights and see the same batch; the compiled model is a second instance
with the eager one's state dict, so the eager timings are not run through dynamo's guards. The
first call (tracing + inductor's code generation, minus inductor's on-disk cache when warm) is
reported as `compile_s`; the timed calls come after it, alternated with the eager ones.
"""

from __future__ import annotations

import time

import torch

from ..model import HybridLM
from ..presets import preset_config
from .timing import Row, alternated_times
from .training import training_step

COMPILE_PRESETS = ("transformer", "mamba", "jamba")


def compiled_rows(presets=COMPILE_PRESETS, size: str = "small", batch: int = 2, seq_len: int = 128, new_tokens=64):
    rows = []
    for preset in presets:
        eager, compiled = _twins(preset, size)
        rows.append(_training_row(preset, size, eager, compiled, batch, seq_len))
        rows.append(_decode_row(preset, size, eager, compiled, new_tokens))
    return rows


def _twins(preset: str, size: str) -> tuple[HybridLM, HybridLM]:
    torch._dynamo.reset()  # every preset shares HybridLM.forward: a fresh recompile budget for each
    torch.manual_seed(0)
    eager = HybridLM(preset_config(preset, size))
    compiled = HybridLM(preset_config(preset, size))
    compiled.load_state_dict(eager.state_dict())
    compiled.compile()
    return eager, compiled


def _first_call_seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _training_row(preset, size, eager, compiled, batch, seq_len):
    tokens = torch.randint(0, eager.config.vocab_size, (batch, seq_len + 1))
    steps = {}
    for name, model in (("eager", eager), ("compiled", compiled)):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        steps[name] = lambda model=model, optimizer=optimizer: training_step(model, optimizer, tokens)
    compile_s = _first_call_seconds(steps["compiled"])
    compiled_s, eager_s = alternated_times(steps["compiled"], steps["eager"], repeats=3)
    name = f"{preset} {size} train step {batch}x{seq_len}"
    return Row("compiled", name, compiled_s, eager_s, "eager", batch * seq_len, {"compile_s": compile_s})


def _decode_row(preset, size, eager, compiled, new_tokens):
    prompt = torch.randint(0, eager.config.vocab_size, (1, 16))
    compile_s = _first_call_seconds(lambda: compiled.generate(prompt, 4, temperature=0))
    same = torch.equal(compiled.generate(prompt, 16, temperature=0), eager.generate(prompt, 16, temperature=0))
    compiled_s, eager_s = alternated_times(
        lambda: compiled.generate(prompt, new_tokens, temperature=0),
        lambda: eager.generate(prompt, new_tokens, temperature=0),
        repeats=3,
    )
    name = f"{preset} {size} greedy decode {new_tokens} tokens"
    notes = {"compile_s": compile_s, "same_tokens_first_16": same}
    return Row("compiled", name, compiled_s, eager_s, "eager", new_tokens, notes)
