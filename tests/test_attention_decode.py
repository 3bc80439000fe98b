"""The fused one-token attention (ops/attention_decode_cpu.py: cache write, softmax, o_proj) against
the eager path (KVCache.update + SDPA) and the full forward: full and windowed attention, grouped
heads, a cache that grows, biases, batches; and where it must stand aside (padding)."""

import pytest
import torch

from hybridlm import HybridLM, ModelConfig
from hybridlm.ops.dispatch import kernels

from .decoding import count_calls, decode_one_at_a_time, perturbed

pytest.importorskip("numba")

from hybridlm.ops import attention_decode_cpu  # noqa: E402

TOLERANCE = 2e-5


@pytest.fixture
def fused_calls(monkeypatch):
    return count_calls(monkeypatch, {0: (attention_decode_cpu, "_attend_token")})


def _model(pattern: str, **overrides) -> HybridLM:
    torch.manual_seed(0)
    config = ModelConfig.from_preset("transformer", "tiny", pattern=pattern, **overrides)
    return perturbed(HybridLM(config).eval())  # nonzero biases


_decode = decode_one_at_a_time


CASES = {
    "full attention, preallocated": ("(AF)*2", {}, 24),
    "grouped heads, grown cache": ("(AF)*2", {"n_kv_heads": 2}, None),
    "biases": ("(AF)*2", {"attention": {"qkv_bias": True, "out_bias": True}}, 24),
    "full ring of a window": ("(LF)*2", {"attention": {"window": 5}, "n_kv_heads": 1}, 24),
    "window of one": ("(LF)*2", {"attention": {"window": 1}}, 24),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("batch", [1, 3])
def test_fused_attention_decode_equals_reference_and_full_forward(case, batch, fused_calls):
    pattern, overrides, max_len = CASES[case]
    model = _model(pattern, **overrides)
    tokens = torch.randint(0, 258, (batch, 20))
    fused = _decode(model, tokens, 6, max_len)
    with kernels("reference"):
        reference = _decode(model, tokens, 6, max_len)
    with torch.no_grad():
        full = model(tokens)[:, 6:]
    assert (fused - reference).abs().max() <= TOLERANCE
    assert (fused - full).abs().max() <= TOLERANCE
    assert fused_calls[0] == 14 * 2  # every decoded token, both attention layers


def test_a_ring_not_yet_full_is_fused_and_padding_takes_the_masked_path(fused_calls):
    model = _model("(LF)*2", attention={"window": 16})
    tokens = torch.randint(0, 258, (1, 12))
    fused = _decode(model, tokens, 3, 12)  # 12 tokens never fill the 15-slot ring: its slots 0 .. length - 1
    with torch.no_grad():
        assert (fused - model(tokens)[:, 3:]).abs().max() <= TOLERANCE
    assert fused_calls[0] == 9 * 2

    model = _model("(AF)*2")
    short, long = torch.randint(0, 258, (4,)), torch.randint(0, 258, (6,))
    padded = model.generate([short, long], 4, temperature=0)  # the short row is left-padded
    assert fused_calls[0] == 9 * 2  # a stored padding slot needs the mask
    alone = model.generate([short], 4, temperature=0)
    assert torch.equal(padded[0], alone[0])
    assert fused_calls[0] == 9 * 2 + 3 * 2  # decoding alone, the fused step runs
