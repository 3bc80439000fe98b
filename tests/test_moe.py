"""Mixture-of-Experts routing and the load-balancing loss E * sum_i f_i P_i."""

import pytest
import torch

from hybridlm import HybridLM
from hybridlm.layers.moe import MoE, router_stats

from .helpers import tiny_config


@pytest.mark.parametrize("n_experts, top_k", [(4, 1), (4, 2), (16, 2), (8, 3)])
def test_aux_equals_k_when_balanced(n_experts, top_k):
    tokens = 4 * n_experts
    probs = torch.full((tokens, n_experts), 1.0 / n_experts)
    top = torch.stack([(torch.arange(tokens) + j) % n_experts for j in range(top_k)], dim=1)
    stats = router_stats(probs, top, n_experts)
    assert torch.allclose(stats.load, torch.full((n_experts,), top_k / n_experts))
    assert stats.aux.item() == pytest.approx(top_k, abs=1e-6)
    assert stats.load.sum().item() == pytest.approx(top_k)


@pytest.mark.parametrize("n_experts, top_k", [(4, 1), (4, 2), (16, 2)])
def test_aux_equals_e_under_full_collapse(n_experts, top_k):
    probs = torch.zeros(10, n_experts)
    probs[:, 0] = 1.0
    top = torch.arange(top_k).expand(10, top_k)
    assert router_stats(probs, top, n_experts).aux.item() == pytest.approx(n_experts, abs=1e-6)


def test_module_collapse_is_visible_in_stats():
    moe = MoE(d_model=8, d_ff=16, n_experts=4, top_k=2)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0] = 100.0  # expert 0 wins every positive input
    moe(torch.rand(2, 5, 8))
    assert moe.stats.load[0].item() == 1.0
    assert moe.stats.aux.item() == pytest.approx(4.0, abs=1e-4)
    assert moe.stats.entropy.item() < 1e-3


def test_output_is_weighted_sum_of_top_k_experts():
    moe = MoE(d_model=6, d_ff=10, n_experts=5, top_k=2).eval()
    x = torch.randn(1, 3, 6)
    probs = torch.softmax(moe.router(x[0]), -1)
    expected = torch.zeros(3, 6)
    for t in range(3):
        weights, experts = probs[t].topk(2)
        for weight, expert in zip(weights, experts):
            expected[t] += weight * moe.experts[int(expert)](x[0, t : t + 1])[0]
    assert torch.allclose(moe(x)[0], expected, atol=1e-6)


def test_normalised_top_k_divides_by_selected_mass():
    normalised = MoE(d_model=6, d_ff=10, n_experts=5, top_k=2, normalize_top_k=True)
    plain = MoE(d_model=6, d_ff=10, n_experts=5, top_k=2)
    plain.load_state_dict(normalised.state_dict())
    x = torch.randn(2, 4, 6)
    selected_mass = torch.softmax(plain.router(x), -1).topk(2).values.sum(-1, keepdim=True)
    assert torch.allclose(normalised(x), plain(x) / selected_mass, atol=1e-6)


def test_model_aux_loss_uses_configured_coefficient():
    config = tiny_config(pattern="(AE)*2", moe={"n_experts": 4, "top_k": 2, "aux_loss_coef": 0.5})
    model = HybridLM(config)
    model(torch.randint(0, 50, (2, 8)))
    aux = [layer.mixer.stats.aux for layer in model.layers if layer.char == "E"]
    assert model.aux_loss().item() == pytest.approx(0.5 * sum(a.item() for a in aux))
    assert 2.0 - 1e-5 <= aux[0].item() <= 4.0 + 1e-5  # between balanced (K) and collapsed (E)


@pytest.mark.parametrize("normalize_top_k, batch", [(False, 1), (True, 2)])
def test_fused_decode_token_equals_the_eager_layer_and_follows_weight_updates(normalize_top_k, batch):
    from hybridlm.layers.norm import RMSNorm

    torch.manual_seed(0)
    moe = MoE(d_model=16, d_ff=24, n_experts=8, top_k=2, normalize_top_k=normalize_top_k).eval()
    norm = RMSNorm(16)
    x = torch.randn(batch, 1, 16)
    with torch.no_grad():
        for _ in range(2):  # the second time after an in-place change of one expert's weights
            fused = moe.decode_token(x, norm)
            assert fused is not None and moe.stats is not None
            torch.testing.assert_close(fused, moe(norm(x)), rtol=1e-5, atol=1e-6)
            for expert in moe.experts:
                expert.down_proj.weight.mul_(2.0)
