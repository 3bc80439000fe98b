"""glibc's default allocator vs raised mmap/trim thresholds on a training step, each in a fresh process.

python benchmarks/allocator_ab.py --preset mamba --batch 4 --seq-len 256
"""

import argparse

from hybridlm.bench.allocator import allocator_rows
from hybridlm.bench.machine import machine_line
from hybridlm.bench.report import format_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mamba")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print(machine_line())
    print(format_rows(allocator_rows(args.preset, args.batch, args.seq_len, threads=args.threads)))


if __name__ == "__main__":
    main()
