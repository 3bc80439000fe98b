"""Training tokens/s and MFU (vs the fp32 matmul peak measured in the same run) of the presets.

python benchmarks/training_mfu.py --presets transformer mamba2 mamba --batch 4 --seq-len 256
"""

import argparse

import torch

from hybridlm.bench.machine import machine_line
from hybridlm.bench.report import format_rows
from hybridlm.bench.training import TRAINING_PRESETS, training_rows
from hybridlm.presets import presets
from hybridlm.runtime import tune_allocator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(TRAINING_PRESETS), choices=presets())
    parser.add_argument("--size", default="small", choices=["tiny", "small"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    tune_allocator()
    torch.set_num_threads(args.threads)
    print(machine_line())
    print(format_rows(training_rows(args.presets, args.size, args.batch, args.seq_len)))


if __name__ == "__main__":
    main()
