"""Fused CPU kernels vs the PyTorch reference loop, HF's MambaMixer torch path and mambapy, side by side.

    python benchmarks/scan_kernels.py --lengths 1024 4096 --hf-forward 4096 --hf-backward 1024

Same as `hybridlm bench kernels` with the sequence lengths as arguments.
"""

import argparse

import torch

from hybridlm.bench import kernels
from hybridlm.bench.machine import machine_line
from hybridlm.bench.report import format_rows
from hybridlm.runtime import tune_allocator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--hf-forward", type=int, default=4096, help="L of the forward vs transformers/mambapy")
    parser.add_argument("--hf-backward", type=int, default=1024, help="L of forward+backward (HF's is quadratic)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    tune_allocator()
    torch.set_num_threads(args.threads)
    rows = kernels.selective_scan_rows(args.lengths) + kernels.layer_rows(args.lengths)
    rows += kernels.huggingface_mixer_rows(args.hf_forward, args.hf_backward) + kernels.hyena_decode_rows()
    print(machine_line())
    print(format_rows(rows))


if __name__ == "__main__":
    main()
