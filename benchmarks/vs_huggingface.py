"""Our models vs Hugging Face transformers with identical weights: prefill and greedy-decoding tokens/s.

python benchmarks/vs_huggingface.py --presets jamba mamba griffin --size tiny --prefill 2048 --new-tokens 256
"""

import argparse

import torch

from hybridlm.bench.machine import machine_line
from hybridlm.bench.models import HF_FAMILIES, model_rows
from hybridlm.bench.report import format_rows
from hybridlm.runtime import tune_allocator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(HF_FAMILIES), choices=HF_FAMILIES)
    parser.add_argument("--size", default="tiny", choices=["tiny", "small"])
    parser.add_argument("--prefill", type=int, default=2048)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    tune_allocator()
    torch.set_num_threads(args.threads)
    print(machine_line())
    print(format_rows(model_rows(args.presets, args.size, args.prefill, args.new_tokens)))


if __name__ == "__main__":
    main()
