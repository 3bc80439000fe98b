"""Our fused CPU kernels against our PyTorch references, Hugging Face's MambaMixer torch path and mambapy.

Shapes follow the measurements in the issue: d_model 256 (d_inner 512), d_state 16, batch 2, fp32.
"fwd" runs under no_grad; "fwd+bwd" is the forward plus `sum().backward()`. The reference is the
`unbind()` loop with the exponentials computed up front (ops/selective_scan.py): the best plain
PyTorch loop. The Hugging Face path indexes `x[:, :, t]` inside its loop, so its backward is
quadratic in L; its forward+backward is therefore timed at a shorter length.
"""

from __future__ import annotations

import functools
import importlib.util

import torch
import torch.nn.functional as F

from ..config import ModelConfig
from ..layers.context import Context
from ..model import HybridLM
from ..ops.dispatch import kernels, selective_scan
from ..ops.selective_scan import selective_scan_ref
from . import scan_floor
from .hf_twin import transformers_twin
from .scan_floor import scan_inputs
from .timing import Row, alternated_times, best_time

D_MODEL = 256


def _backward_of(fn, inputs):
    """A closure that runs fn on fresh leaves and backpropagates the sum of its first output."""

    def run():
        leaves = [t.detach().requires_grad_(t.is_floating_point()) for t in inputs]
        out = fn(*leaves)
        (out[0] if isinstance(out, tuple) else out).sum().backward()

    return run


def _no_grad(fn, inputs):
    def run():
        with torch.no_grad():
            fn(*inputs)

    return run


def selective_scan_rows(lengths, batch: int = 2, d_inner: int = 2 * D_MODEL, d_state: int = 16, repeats: int = 3):
    """The scan alone (with the D skip and SiLU(z) gate): our kernel vs the reference loop (and mambapy's pscan)."""
    rows = []
    for length in lengths:
        inputs = scan_inputs(batch, length, d_inner, d_state)

        def reference(x, dt, A, B, C, D, z):
            return selective_scan_ref(x, dt, A, B, C, D)[0] * F.silu(z)

        def ours(*args):
            with kernels("cpu"):
                return selective_scan(*args)

        candidates = {"reference loop": reference}
        if importlib.util.find_spec("mambapy") is not None:
            from mambapy.mamba import MambaBlock

            def mambapy_pscan(x, dt, A, B, C, D, z):
                return MambaBlock.selective_scan(None, x, dt, A, B[:, :, 0], C[:, :, 0], D) * F.silu(z)

            candidates["mambapy pscan"] = mambapy_pscan
        for mode, wrap in (("fwd", _no_grad), ("fwd+bwd", _backward_of)):
            ours_s = best_time(wrap(ours, inputs), repeats)
            for baseline_name, baseline in candidates.items():
                baseline_s = best_time(wrap(baseline, inputs), 1 if length > 2048 and mode == "fwd+bwd" else repeats)
                rows.append(
                    Row("kernels", f"Mamba-1 scan {mode} L={length}", ours_s, baseline_s, baseline_name, batch * length)
                )
    return rows


def _layer_model(pattern: str, **fields) -> HybridLM:
    config = ModelConfig.from_dict({"pattern": pattern, "d_model": D_MODEL, "n_heads": 8, "vocab_size": 264, **fields})
    return HybridLM(config)


def layer_rows(lengths, batch: int = 2, repeats: int = 2):
    """Whole Mamba and RG-LRU layers, forward+backward: with our kernels vs with the reference scans."""
    rows = []
    # these benchmarks time one named family's kernels against their references: naming the family is the point
    for char, label in (("M", "Mamba layer"), ("R", "RG-LRU block")):
        mixer = _layer_model(char).layers[0].mixer
        for length in lengths:
            ours_s = best_time(_layer_step(mixer, batch, length, "cpu"), repeats)
            reference_s = best_time(_layer_step(mixer, batch, length, "reference"), 1 if length > 2048 else repeats)
            rows.append(
                Row("kernels", f"{label} fwd+bwd L={length}", ours_s, reference_s, "reference scans", batch * length)
            )
    return rows


def _layer_step(mixer, batch: int, length: int, choice: str):
    u = torch.randn(batch, length, D_MODEL)
    ctx = Context(positions=torch.arange(length).expand(batch, length))

    def run():
        with kernels(choice):
            mixer.zero_grad(set_to_none=True)
            mixer(u, None, ctx).sum().backward()

    return run


def huggingface_mixer_rows(forward_length: int, backward_length: int, batch: int = 2, repeats: int = 2):
    """Our Mamba layer vs transformers' MambaMixer (its CPU torch path) and mambapy's MambaBlock, same weights."""
    if importlib.util.find_spec("transformers") is None:
        return []
    ours_model = _layer_model("M", tie_embeddings=True)
    theirs_model = transformers_twin(ours_model)
    ours, theirs = ours_model.layers[0].mixer, theirs_model.backbone.layers[0].mixer
    others = {"transformers MambaMixer": lambda u: theirs(u)}
    if importlib.util.find_spec("mambapy") is not None:
        from mambapy.mamba import MambaBlock, MambaConfig

        block = MambaBlock(MambaConfig(d_model=D_MODEL, n_layers=1, d_state=16, dt_rank=ours.dt_rank))
        block.load_state_dict(theirs.state_dict())
        others["mambapy MambaBlock (pscan)"] = block
    rows = []
    for mode, length in (("fwd", forward_length), ("fwd+bwd", backward_length)):
        u = torch.randn(batch, length, D_MODEL)
        ctx = Context(positions=torch.arange(length).expand(batch, length))
        wrap = _no_grad if mode == "fwd" else _backward_of
        with kernels("cpu"):
            ours_s = best_time(wrap(functools.partial(ours, state=None, ctx=ctx), [u]), repeats)
        for name, module in others.items():
            slow = name.startswith("transformers") and mode == "fwd+bwd"  # quadratic backward: time it once
            baseline_s = best_time(wrap(module, [u]), 1 if slow else repeats, warmup=0 if slow else 1)
            rows.append(Row("kernels", f"Mamba layer {mode} L={length}", ours_s, baseline_s, name, batch * length))
    return rows


def hyena_decode_rows(steps: int = 200, batch: int = 1):
    """One Hyena layer's decoding step (modal recurrence + short conv): kernels vs references."""
    mixer = _layer_model("H").layers[0].mixer.eval()
    state = mixer.allocate_state(batch, None, "cpu", torch.float32)
    u = torch.randn(batch, 1, D_MODEL)
    ctx = Context(positions=torch.zeros(batch, 1, dtype=torch.long))

    def decode(choice):
        def run():
            with kernels(choice), torch.no_grad():
                for _ in range(steps):
                    mixer(u, state, ctx)

        return run

    ours_s, reference_s = best_time(decode("cpu")), best_time(decode("reference"))
    return [Row("kernels", f"Hyena decode step x{steps}", ours_s, reference_s, "reference recurrence", steps * batch)]


def huggingface_mamba2_rows(lengths, batch: int = 2, repeats: int = 5, d_state: int = 64, head_dim: int = 64):
    """Our Mamba-2 (SSD) layer vs transformers' Mamba2Mixer (its CPU torch path), same weights,
    forward+backward (training mode) and forward: A/B alternated medians."""
    if importlib.util.find_spec("transformers") is None:
        return []
    ours_model = _layer_model("D", tie_embeddings=True, mamba2={"d_state": d_state, "head_dim": head_dim})
    theirs_model = transformers_twin(ours_model)
    ours, theirs = ours_model.layers[0].mixer.train(), theirs_model.backbone.layers[0].mixer.train()
    rows = []
    for length in lengths:
        u = torch.randn(batch, length, D_MODEL)
        ctx = Context(positions=torch.arange(length).expand(batch, length))
        for mode, wrap in (("fwd+bwd", _backward_of), ("fwd", _no_grad)):
            with kernels(""):
                ours_s, theirs_s = alternated_times(
                    wrap(functools.partial(ours, state=None, ctx=ctx), [u]), wrap(theirs, [u]), repeats
                )
            name = f"Mamba-2 layer {mode} L={length} n={d_state} p={head_dim}"
            rows.append(Row("kernels", name, ours_s, theirs_s, "transformers Mamba2Mixer", batch * length))
    return rows


def kernel_rows(quick: bool) -> list[Row]:
    """The kernel suite; `quick` keeps it to about a minute on the 2-core dev CPU."""
    if quick:
        return (
            selective_scan_rows([1024])
            + layer_rows([1024])
            + huggingface_mixer_rows(forward_length=1024, backward_length=256)
            + hyena_decode_rows(steps=100)
            + recurrent_block_rows(forward_length=1024, backward_length=128, steps=100)
            + scan_floor.floor_rows([1024])
            + huggingface_mamba2_rows([1024], repeats=3)
        )
    return (
        selective_scan_rows([1024, 4096])
        + layer_rows([4096])
        + huggingface_mixer_rows(forward_length=4096, backward_length=1024)
        + hyena_decode_rows()
        + recurrent_block_rows()
        + scan_floor.floor_rows([1024, 4096])
        + huggingface_mamba2_rows([1024, 4096])
    )


def recurrent_block_rows(size: str = "small", forward_length: int = 2048, backward_length: int = 256, steps: int = 200):
    """Griffin's recurrent block (RG-LRU) against transformers' RecurrentGemmaRecurrentBlock, the same
    weights (the griffin preset's first layer): forward, forward+backward (batch 2), and decoding
    `steps` tokens one at a time from a cache."""
    from .models import paired_models

    pair = paired_models("griffin", size)
    if pair is None:
        return []
    ours_model, theirs_model, _ = pair
    ours, theirs = ours_model.layers[0].mixer, theirs_model.model.layers[0].temporal_block
    d_model = ours_model.config.d_model
    rows = []
    for mode, length, batch in (("fwd", forward_length, 1), ("fwd+bwd", backward_length, 2)):
        u = torch.randn(batch, length, d_model)
        positions = torch.arange(length).expand(batch, length)
        ctx = Context(positions=positions)
        wrap = _no_grad if mode == "fwd" else _backward_of
        ours_run = wrap(lambda u, ctx=ctx: ours(u, None, ctx), [u])
        theirs_run = wrap(lambda u, positions=positions: theirs(u, positions, None, use_cache=False)[0], [u])
        ours_s, theirs_s = alternated_times(ours_run, theirs_run, 3)
        name = f"RG-LRU block ({size}) {mode} {batch}x{length}"
        rows.append(Row("kernels", name, ours_s, theirs_s, "transformers RecurrentGemmaRecurrentBlock", batch * length))
    tokens = torch.randn(steps, 1, 1, d_model)

    def ours_decode():
        state = ours.allocate_state(1, None, "cpu", torch.float32)
        with torch.inference_mode():
            for step in range(steps):
                ours(tokens[step], state, Context(positions=torch.full((1, 1), step + 1)))

    def theirs_decode():
        theirs._setup_cache(1, "cpu", torch.float32)
        theirs.conv1d_state = torch.zeros(1, ours.width, ours.options.d_conv - 1)  # HF sizes it by d_model
        with torch.inference_mode():
            for step in range(steps):
                theirs(tokens[step], torch.full((1, 1), step + 1), None, use_cache=True)

    ours_s, theirs_s = alternated_times(ours_decode, theirs_decode, 3)
    name = f"RG-LRU block ({size}) decode step x{steps}"
    rows.append(Row("kernels", name, ours_s, theirs_s, "transformers RecurrentGemmaRecurrentBlock", steps))
    return rows
