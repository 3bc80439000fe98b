"""The fused one-token MoE (ops/moe_decode_cpu.py: norm, router, top-k, experts) against the eager
MoE: outputs, renormalised top-k weights, MLP biases, batches, and the routing it leaves for stats."""

import pytest
import torch

from hybridlm import HybridLM, ModelConfig
from hybridlm.ops.dispatch import kernels

pytest.importorskip("numba")


def _model(**overrides) -> HybridLM:
    torch.manual_seed(0)
    model = HybridLM(ModelConfig.from_preset("transformer", "tiny", pattern="(AE)*2", **overrides)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


def _decode(model, tokens):
    with torch.inference_mode():
        cache = model.allocate_cache(tokens.shape[0], max_len=tokens.shape[1])
        model(tokens[:, :4], cache=cache)
        logits = torch.cat([model(tokens[:, t : t + 1], cache=cache) for t in range(4, tokens.shape[1])], 1)
    probs, chosen, _ = model.layers[-1].mixer._routing
    return logits, probs, chosen


@pytest.fixture
def fused_calls(monkeypatch):
    from hybridlm.ops import moe_decode_cpu

    calls, kernel = [0], moe_decode_cpu._moe_token

    def counting(*args):
        calls[0] += 1
        return kernel(*args)

    monkeypatch.setattr(moe_decode_cpu, "_moe_token", counting)
    return calls


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
