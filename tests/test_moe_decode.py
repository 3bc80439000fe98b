"""The fused one-token MoE (ops/moe_decode_cpu.py: norm, router, top-k, experts) against the eager
MoE: outputs, renormalised top-k weights, MLP biases, batches, and the routing it leaves for stats."""

import pytest
import torch

from hybridlm import HybridLM, ModelConfig
from hybridlm.ops.dispatch import kernels

from .decoding import count_calls, decode_one_at_a_time, perturbed

pytest.importorskip("numba")


def _model(**overrides) -> HybridLM:
    torch.manual_seed(0)
    model = HybridLM(ModelConfig.from_preset("transformer", "tiny", pattern="(AE)*2", **overrides)).eval()
    return perturbed(model)


def _decode(model, tokens):
    logits = decode_one_at_a_time(model, tokens, prompt=4)
    probs, chosen, _ = model.layers[-1].mixer._routing
    return logits, probs, chosen


@pytest.fixture
def fused_calls(monkeypatch):
    from hybridlm.ops import moe_decode_cpu

    return count_calls(monkeypatch, {0: (moe_decode_cpu, "_moe_token")})


@pytest.mark.parametrize(
    "overrides",
    [
        {"moe": {"n_experts": 8, "top_k": 2}},
        {"moe": {"n_experts": 6, "top_k": 3, "normalize_top_k": True}, "mlp": {"bias": True}},
        {"moe": {"n_experts": 4, "top_k": 1}, "mlp": {"activation": "gelu_tanh", "gated": False}},
    ],
)
@pytest.mark.parametrize("batch", [1, 2])
def test_fused_moe_decode_equals_the_eager_moe(overrides, batch, fused_calls):
    model = _model(**overrides)
    tokens = torch.randint(0, 258, (batch, 12))
    fused, fused_probs, fused_chosen = _decode(model, tokens)
    assert fused_calls[0] == 8 * 2  # every decoded token, both MoE layers
    with kernels("reference"):
        reference, probs, chosen = _decode(model, tokens)
    assert (fused - reference).abs().max() <= 2e-5
    assert (fused_probs - probs).abs().max() <= 1e-6
    assert torch.equal(fused_chosen.sort(-1).values, chosen.sort(-1).values)
