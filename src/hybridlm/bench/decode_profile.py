"""Where a decoded token's time goes: arithmetic against framework overhead (torch profiler).

Per token at batch 1: the wall time; the time inside top-level aten ops and how many there are;
everything else (Python, module calls, numba kernels, which are not aten ops); and the floor
the hardware sets, max(FLOPs / matmul peak, weight bytes / memory bandwidth), both measured in
the same run. A decoding step of a small model is far above that floor: it is a few hundred
small eager ops, each paying ~10 us of dispatch.
"""

from __future__ import annotations

import time

import torch

from ..analysis.flops import model_flops
from ..model import HybridLM
from ..ops.dispatch import kernels
from ..presets import preset_config
from .timing import Row, matmul_peak, memory_bandwidth


def _decode(model: HybridLM, cache, steps: int) -> float:
    token = torch.zeros(1, 1, dtype=torch.long)
    start = time.perf_counter()
    for _ in range(steps):
        model(token, cache=cache)
    return (time.perf_counter() - start) / steps


def decode_profile_rows(presets=("mamba", "transformer"), size: str = "small", steps: int = 32, prompt: int = 16):
    peak, bandwidth = matmul_peak(), memory_bandwidth()
    rows = []
    for preset in presets:
        torch.manual_seed(0)
        config = preset_config(preset, size)
        model = HybridLM(config).eval()
        flops = model_flops(config, prompt + steps).decode_per_token
        floor = max(flops / peak, 4 * model.num_parameters() / bandwidth)
        for choice, label in (("", "kernels"), ("reference", "reference")):
            with kernels(choice), torch.no_grad():
                cache = model.allocate_cache(1, max_len=prompt + 3 * steps + 8)
                model(torch.zeros(1, prompt, dtype=torch.long), cache=cache)
                _decode(model, cache, 2)  # warm-up
                wall = _decode(model, cache, steps)
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
                    profiled_wall = _decode(model, cache, steps)
            top_level = [e for e in profile.events() if e.cpu_parent is None and e.name.startswith("aten::")]
            in_ops = sum(e.cpu_time_total for e in top_level) / 1e6 / steps
            notes = {
                "wall_us": wall * 1e6,
                "profiled_wall_us": profiled_wall * 1e6,
                "aten_ops_per_token": len(top_level) / steps,
                "in_aten_ops_us": in_ops * 1e6,
                "outside_aten_ops_us": (profiled_wall - in_ops) * 1e6,
                "hardware_floor_us": floor * 1e6,
                "floor_fraction": floor / wall,
            }
            rows.append(Row("decode-profile", f"{preset} {size} decode step ({label})", wall, None, "", 1, notes))
    return rows
