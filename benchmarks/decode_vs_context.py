"""Per-token decoding latency and cache bytes at context lengths 1K, 4K, 16K (issue 3), the Jamba vs
Transformer KV comparison at equal width and depth, and where a decoding step's time goes.

    python benchmarks/decode_vs_context.py --contexts 1024 4096 16384 --steps 32
"""

import argparse

import torch

from hybridlm.bench.context import CONTEXT_PRESETS, CONTEXTS, context_rows, jamba_kv_rows
from hybridlm.bench.decode_profile import decode_profile_rows
from hybridlm.bench.machine import machine_line
from hybridlm.bench.report import format_rows
from hybridlm.runtime import tune_allocator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(CONTEXT_PRESETS))
    parser.add_argument("--contexts", type=int, nargs="+", default=list(CONTEXTS))
    parser.add_argument("--steps", type=int, default=32, help="decoded tokens timed per context")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    tune_allocator()
    torch.set_num_threads(args.threads)
    rows = jamba_kv_rows() + context_rows(args.presets, args.contexts, steps=args.steps)
    print(machine_line())
    print(format_rows(rows + decode_profile_rows(("mamba", "jamba", "transformer"))))


if __name__ == "__main__":
    main()
