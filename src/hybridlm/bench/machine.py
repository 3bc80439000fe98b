"""Where a benchmark ran: CPU model, ISA flags, threads, library versions and the machine's load.

Every `hybridlm bench` report (and benchmarks/*.py) starts with `machine_line()`, so that a ratio
is never read without the machine it was measured on: the same kernels differ by 2x between an
AVX2 and an AVX-512 CPU.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path

import torch

ISA_FLAGS = {"AVX2": ("avx2",), "AVX-512": ("avx512f",), "AMX": ("amx_tile", "amx_bf16", "amx_int8")}


def cpu_model_and_flags(cpuinfo: str | None = None) -> tuple[str, set[str]]:
    """The first 'model name' and 'flags' of /proc/cpuinfo (or of the given text); platform's
    processor string and no flags where there is no /proc/cpuinfo."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text(errors="replace") if path.exists() else ""
    model, flags = "", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = " ".join(value.split())
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model or platform.processor() or platform.machine() or "unknown CPU", flags


def isa_summary(flags: set[str]) -> str:
    """'AVX2 yes, AVX-512 yes, AMX no' from a set of /proc/cpuinfo flags."""
    return ", ".join(
        f"{name} {'yes' if any(flag in flags for flag in names) else 'no'}" for name, names in ISA_FLAGS.items()
    )


def machine_info(cpuinfo: str | None = None) -> dict:
    """The machine line's fields as a dict (what `--json` prints first)."""
    model, flags = cpu_model_and_flags(cpuinfo)
    info = {
        "cpu": model,
        "isa": isa_summary(flags) if flags else "unknown (no /proc/cpuinfo flags)",
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "numba": _version("numba"),
        "load_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    return info


def machine_line(cpuinfo: str | None = None) -> str:
    """One line: CPU model; ISA flags; CPUs and threads (torch's, which the numba kernels follow);
    torch and numba versions; the 1-minute load average (other jobs on a shared machine)."""
    info = machine_info(cpuinfo)
    return (  # the numba kernels take torch's thread count (ops/numba_support.Kernel)
        f"machine: {info['cpu']}; {info['isa']}; {info['logical_cpus']} logical CPUs, "
        f"{info['torch_threads']} thread(s); torch {info['torch']}, numba {info['numba']}; "
        f"load average (1 min) {info['load_1min']}"
    )


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
