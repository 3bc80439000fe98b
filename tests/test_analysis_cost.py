"""The cost model against reality: cache bytes = cache.nbytes(), FLOPs = torch's FLOP counter,
parameters = sum of numel, and the published reference values to the byte."""

import functools
import importlib
import pkgutil
import types

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import _disable_current_modes
from torch.utils.flop_counter import FlopCounterMode

import hybridlm.layers
from hybridlm import HybridLM, ModelConfig, presets
from hybridlm.analysis.cache_size import cache_bytes, kv_formula_bytes, simplified_cache_bytes
from hybridlm.analysis.cost import cost_report
from hybridlm.analysis.flops import attention_pairs, hyena_fft_flops, mixing_flops, model_flops
from hybridlm.analysis.params import build_meta
from hybridlm.analysis.reference import MISTRAL_7B, jamba_kv_table, seed_example

from .helpers import MIXER_CASES, tiny_config

GIB = 2**30
CASES = {f"preset-{name}": ModelConfig.from_preset(name, "tiny") for name in presets()}
CASES.update({f"mixer-{name}": tiny_config(**fields) for name, fields in MIXER_CASES.items()})


# ---- reference values -----------------------------------------------------------------------------
def test_seed_worked_example_simplified_bytes():
    rows = {row["model"]: row for row in seed_example()}
    assert rows["24 attention layers"]["simplified_bytes"] == 3_221_225_472
    assert rows["3 attention + 21 SSM layers"]["simplified_bytes"] == 402_825_216
    assert rows["24 SSM layers"]["simplified_bytes"] == 196_608


def test_seed_worked_example_with_our_state_sizes():
    """16 heads x 128 (MHA) and Mamba-1 d_inner 4096, d_state 16, conv 4, all fp32 at N = 8192."""
    rows = {row["model"]: row["cache_bytes"] for row in seed_example()}
    kv_layer, slots_layer = 2 * 8192 * 2048 * 4, 8192 * 8
    mamba_layer = 4096 * 16 * 4 + 4096 * 3 * 4
    assert rows["24 attention layers"] == 24 * (kv_layer + slots_layer)
    assert rows["3 attention + 21 SSM layers"] == 3 * (kv_layer + slots_layer) + 21 * mamba_layer
    assert rows["24 SSM layers"] == 24 * mamba_layer == 7_471_104


def test_jamba_paper_kv_table_at_256k_tokens_16_bit():
    rows = {row["model"].split(" (")[0].split(",")[0]: row for row in jamba_kv_table()}
    table = {row["model"]: row["kv_formula_bytes"] for row in jamba_kv_table()}
    assert rows["Jamba-v0.1"]["kv_formula_bytes"] == 4 * GIB
    assert table["Mistral-7B, counted as full attention"] == 32 * GIB
    assert table["Mistral-7B, 4096-token sliding window"] == GIB // 2
    assert rows["Llama-2-7B"]["kv_formula_bytes"] == 128 * GIB


def test_reference_models_have_their_published_parameter_counts():
    """Llama-2-7B 6,738,415,616 and Mistral-7B 7,241,732,096 (HF config defaults), Jamba-v0.1 51.57B."""
    assert build_meta(ModelConfig.from_preset("transformer", "paper")).num_parameters() == 6_738_415_616
    assert build_meta(ModelConfig.from_dict(MISTRAL_7B)).num_parameters() == 7_241_732_096
    assert cost_report(ModelConfig.from_preset("jamba", "paper"), 1024).params["total"] == 51_570_323_328


def test_cache_formulas_by_hand():
    """Jamba tiny: 1 attention layer (2 KV heads of 12) and 7 Mamba layers (d_inner 96, N 8, conv 4)."""
    config = ModelConfig.from_preset("jamba", "tiny")
    assert kv_formula_bytes(config, 100, batch=3, dtype="bfloat16") == 2 * 3 * 100 * 2 * 12 * 2
    assert simplified_cache_bytes(config, 100, batch=1, dtype="float32") == (2 * 100 * 48 + 7 * 48) * 4
    windowed = ModelConfig(pattern="L", d_model=32, n_heads=4, attention={"window": 8})
    assert kv_formula_bytes(windowed, 5, dtype="float32") == 2 * 5 * 32 * 4  # below the window: N
    assert kv_formula_bytes(windowed, 500, dtype="float32") == 2 * 8 * 32 * 4  # capped at w


# ---- cache bytes = what the cache holds -----------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CASES))
def test_cache_bytes_equal_allocated_cache_after_prefill(name):
    config = CASES[name]
    model = HybridLM(config).eval()
    for seq_len in (3, 21) if name.startswith("mixer-") else (21,):  # 3 < window - 1: the ring is still allocated
        cache = model.allocate_cache(2, max_len=seq_len)
        with torch.no_grad():
            model(torch.randint(0, config.vocab_size, (2, seq_len)), cache=cache)
        assert cache.nbytes() == sum(row.total for row in cache_bytes(config, seq_len, batch=2, dtype="float32"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["preset-zamba2", "preset-stripedhyena", "preset-griffin"])
def test_cache_bytes_in_16_bit_keep_states_fp32(name, dtype):
    config = CASES[name]
    model = HybridLM(config).to(dtype).eval()
    cache = model.allocate_cache(1, max_len=9)
    with torch.no_grad():
        model(torch.randint(0, config.vocab_size, (1, 9)), cache=cache)
    assert cache.nbytes() == sum(row.total for row in cache_bytes(config, 9, batch=1, dtype=dtype))


# ---- parameters ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", presets())
def test_parameters_are_the_sum_of_numel(name):
    config = ModelConfig.from_preset(name, "tiny")
    report = cost_report(config, 16)
    model = HybridLM(config)
    assert report.params["total"] == sum(p.numel() for p in model.parameters())
    assert sum(count for kind, count in report.params.items() if kind != "total") == report.params["total"]
    paper = cost_report(ModelConfig.from_preset(name, "paper"), 16)
    assert paper.params["total"] == sum(p.numel() for p in build_meta(paper.config).parameters())


# ---- FLOPs against torch's counter -------------------------------------------------------------------
def _uncounted(function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with _disable_current_modes():
            return function(*args, **kwargs)

    return wrapper


@pytest.fixture
def count_dense_only(monkeypatch):
    """Hide the sequence-mixing kernels (scans, FFT, SDPA) from the FLOP counter; keep matmuls and convs.

    Models run in float64, which always takes the PyTorch reference kernels (ops/dispatch.py), so
    the depthwise convolutions are aten.convolution calls the counter sees."""
    monkeypatch.setattr(F, "scaled_dot_product_attention", _uncounted(F.scaled_dot_product_attention))
    for info in pkgutil.iter_modules(hybridlm.layers.__path__):
        module = importlib.import_module(f"hybridlm.layers.{info.name}")
        for name, value in list(vars(module).items()):
            from_ops = isinstance(value, types.FunctionType) and value.__module__.startswith("hybridlm.ops")
            if from_ops and "conv1d" not in name:
                monkeypatch.setattr(module, name, _uncounted(value))


def _count(function) -> dict:
    with FlopCounterMode(display=False) as counter:
        function()
    return {str(op): flops for op, flops in counter.get_flop_counts()["Global"].items()}


FLOP_CASES = sorted(name for name in CASES if name.startswith("mixer-")) + ["preset-jamba", "preset-zamba2"]


@pytest.mark.parametrize("name", FLOP_CASES)
def test_dense_flops_equal_flop_counter_forward_and_decode(name, count_dense_only):
    config, batch, length = CASES[name], 2, 11
    model = HybridLM(config).double().eval()
    tokens = torch.randint(0, config.vocab_size, (batch, length))
    with torch.no_grad():
        forward = sum(_count(lambda: model(tokens)).values())
        cache = model.allocate_cache(batch, max_len=length + 1)
        model(tokens, cache=cache)
        decode = sum(_count(lambda: model(tokens[:, :1], cache=cache)).values())
    dense = model_flops(config, length).dense_per_token
    assert forward == dense * batch * length
    assert decode == dense * batch


@pytest.mark.parametrize("name", ["mixer-E", "mixer-M-multihead-norms", "mixer-P-RA", "mixer-S", "mixer-H"])
def test_training_is_three_times_forward(name, count_dense_only):
    """Backward of every matmul is two matmuls. torch counts a grouped convolution's backward as if
    it were dense, so convolutions are taken at 3x their forward count. (Mamba-2's chunked SSD runs
    matmuls whose backward the counter sees: it is left out.)"""
    config, batch, length = CASES[name], 2, 5
    model = HybridLM(config).double()
    tokens = torch.randint(0, config.vocab_size, (batch, length))
    counts = _count(lambda: model(tokens).sum().backward())
    convolution = counts.pop("aten.convolution", 0)
    counts.pop("aten.convolution_backward", None)
    assert sum(counts.values()) + 3 * convolution == 3 * model_flops(config, length).dense_per_token * batch * length


def _explicit_attention(q, k, v, rows, window):
    """Each query row t against exactly the keys it may see (t - w < s <= t), as plain matmuls."""
    for t in rows:
        keys = slice(max(0, t + 1 - (window or t + 1)), t + 1)
        probs = torch.softmax(q[:, t : t + 1] @ k[:, keys].transpose(-1, -2), -1)
        probs @ v[:, keys]


@pytest.mark.parametrize("char", ["A", "L"])
def test_attention_flops_equal_explicit_matmul_attention(char):
    """Prefill counts QK^T and PV over the pairs the causal (windowed) mask allows, decode the N-th row."""
    heads, head_dim, length, window = 3, 8, 13, 5
    config = ModelConfig(pattern=char, d_model=heads * head_dim, n_heads=heads, attention={"window": window})
    q, k, v = (torch.randn(heads, length, head_dim) for _ in range(3))
    mask_window = window if char == "L" else None
    prefill, decode = mixing_flops(config, char, length)
    assert prefill == sum(_count(lambda: _explicit_attention(q, k, v, range(length), mask_window)).values())
    assert decode == sum(_count(lambda: _explicit_attention(q, k, v, [length - 1], mask_window)).values())
    assert attention_pairs(13, None) == 91 and attention_pairs(13, 5) == 15 + 8 * 5


def test_scan_and_fft_terms_by_hand():
    """Hand counts per token for the recurrences (see flops.py), and prefill = N x decode for scans."""
    config = tiny_config(mamba={"d_state": 4}, mamba2={"d_state": 8, "head_dim": 8}, rglru={"width": 48})
    d_inner = 64  # expand 2 x d_model 32
    assert mixing_flops(config, "M", 1) == (7 * 64 * 4 + 3 * 64, 7 * 64 * 4 + 3 * 64)
    assert mixing_flops(config, "D", 1)[1] == 5 * d_inner * 8 + 3 * d_inner + 2 * 8
    assert mixing_flops(config, "R", 10) == (10 * 10 * 48, 10 * 48)
    assert mixing_flops(config, "H", 50)[1] == 11 * 32 * 3 + 2 * 32
    assert hyena_fft_flops(32, 3, 512) == 32 * (3 * 2.5 * 1024 * 10 + 6 * 513 + 9 * 3 * 512 + 2 * 512)
    for char in "MDR":
        prefill, decode = mixing_flops(config, char, 37)
        assert prefill == 37 * decode


def test_attention_prefill_is_the_sum_of_decode_steps():
    config = ModelConfig.from_preset("griffin", "tiny")  # window 16
    for char in "AL":
        total = sum(mixing_flops(config, char, n)[1] for n in range(1, 41))
        assert mixing_flops(config, char, 40)[0] == total


def test_moe_counts_active_experts_only():
    dense = model_flops(tiny_config(pattern="AF"), 8).dense_per_token
    moe = model_flops(tiny_config(pattern="AE", moe={"n_experts": 8, "top_k": 2}), 8).dense_per_token
    mlp = 3 * 2 * 32 * 48
    assert moe - dense == 2 * 32 * 8 + mlp  # router + one more expert than the dense MLP
