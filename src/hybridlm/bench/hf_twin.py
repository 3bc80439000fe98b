"""A transformers copy of one of our models, with the same weights, for the side-by-side benchmarks."""

from __future__ import annotations

import tempfile

import torch


def transformers_twin(model, use_mambapy: bool = False):
    """`model` exported with `hybridlm.hf.save_hf` and loaded back by `AutoModelForCausalLM`.

    use_mambapy: train through mambapy's parallel scan, for the families whose transformers config
    has that switch (Mamba, Jamba); the others have no such option and ignore it. The export goes to a
    temporary folder that is removed once transformers has read it, so a benchmark leaves nothing
    behind in the system's temp directory.
    """
    import transformers

    from ..hf import save_hf

    # the benchmark's table is its output: no "Loading weights" bar per model, no notes that the
    # CUDA kernels are missing (the page says HF runs its CPU torch paths)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()

    with tempfile.TemporaryDirectory(prefix="hybridlm-bench-") as directory:
        save_hf(model, directory)
        config = transformers.AutoConfig.from_pretrained(directory)
        if use_mambapy and hasattr(config, "use_mambapy"):
            config.use_mambapy = True
        return transformers.AutoModelForCausalLM.from_pretrained(directory, config=config, dtype=torch.float32)
