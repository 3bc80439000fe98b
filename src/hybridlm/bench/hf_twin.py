"""A transformers copy of one of our models, with the same weights, for the side-by-side benchmarks."""

from __future__ import annotations

import tempfile

import torch


def transformers_twin(model, **overrides):
    """`model` exported with `hybridlm.hf.save_hf` and loaded back by `AutoModelForCausalLM`.

    The export goes to a temporary folder that is removed once transformers has read it, so a
    benchmark leaves nothing behind in the system's temp directory.
    """
    import transformers

    from ..hf import save_hf

    with tempfile.TemporaryDirectory(prefix="hybridlm-bench-") as directory:
        save_hf(model, directory)
        return transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, **overrides)
