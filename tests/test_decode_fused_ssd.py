"""The fused one-token steps of the Mamba-2 sub-layer (ops/mamba2_step_cpu.py) and of Zamba's shared
block (ops/shared_step_cpu.py), and exact GeLU / LoRA in the fused MLP (ops/decode_cpu.py), against
the eager reference (`kernels("reference")`) and the full forward."""

import pytest
import torch
from torch import nn

from hybridlm import HybridLM, ModelConfig
from hybridlm.ops.dispatch import kernels

from .decoding import count_calls, decode_one_at_a_time, perturbed

pytest.importorskip("numba")

from hybridlm.ops import attention_decode_cpu, decode_cpu, mamba2_step_cpu, shared_step_cpu  # noqa: E402

TOLERANCE = 2e-5


_decode = decode_one_at_a_time


def _reference_decode(model, tokens):
    with kernels("reference"):
        return _decode(model, tokens)


def _perturbed(config: ModelConfig, seed: int = 0) -> HybridLM:
    """A model whose every weight is nudged: LoRA up-matrices and biases start at zero, which would
    hide a missing term."""
    torch.manual_seed(seed)
    return perturbed(HybridLM(config).eval())


@pytest.fixture
def calls(monkeypatch):
    """How many times each fused kernel ran."""
    return count_calls(
        monkeypatch,
        {
            "mamba2": (mamba2_step_cpu, "_sublayer_step"),
            "project": (shared_step_cpu, "_project"),
            "after": (shared_step_cpu, "_after_attention"),
            "mlp": (decode_cpu, "_mlp_step"),
            "attend": (attention_decode_cpu, "_attend_token"),
        },
    )


def _check(model, tokens, calls, fused_shared: bool = True):
    fused = _decode(model, tokens)
    reference = _reference_decode(model, tokens)
    with torch.no_grad():
        full = model(tokens)[:, 3:]
    assert (fused - reference).abs().max() <= TOLERANCE
    assert (fused - full).abs().max() <= TOLERANCE
    steps, chars = tokens.shape[1] - 3, model.config.chars
    assert calls["mamba2"] == steps * chars.count("D")
    assert calls["project"] == calls["after"] == (steps * chars.count("S") if fused_shared else 0)
    rope = model.config.shared.rope  # with RoPE the shared block runs `attend`, which rotates q and k
    assert calls["attend"] == (0 if rope else calls["project"])


@pytest.mark.parametrize("name", ["mamba2", "zamba2", "zamba"])
@pytest.mark.parametrize("batch", [1, 3])
def test_presets_decode_fused_like_the_reference_and_the_full_forward(name, batch, calls):
    model = _perturbed(ModelConfig.from_preset(name, "tiny"))
    _check(model, torch.randint(0, 258, (batch, 10)), calls)


MAMBA2_VARIANTS = {
    "groups, biases, no conv bias": {"n_groups": 2, "proj_bias": True, "conv_bias": False},
    "dt clamp that binds": {"dt_limit": (0.05, 0.08)},
    "conv width 2, one head per group": {"d_conv": 2, "n_groups": 8, "head_dim": 16},
}


@pytest.mark.parametrize("variant", MAMBA2_VARIANTS)
def test_mamba2_variants(variant, calls):
    config = ModelConfig.from_preset(
        "mamba2", "tiny", pattern="D D", norm_offset=True, mamba2={**MAMBA2_VARIANTS[variant], "d_state": 8}
    )
    _check(_perturbed(config, 1), torch.randint(0, 258, (2, 9)), calls)


SHARED_VARIANTS = {
    "no adapters": {"lora_rank": 0},
    "MLP adapter only, silu": {"lora_attention": False, "activation": "silu"},
    "gelu_tanh, RoPE, GQA": {"activation": "gelu_tanh", "rope": True, "n_kv_heads": 2},
    "one block, rank 1": {"n_blocks": 1, "lora_rank": 1},
}


@pytest.mark.parametrize("variant", SHARED_VARIANTS)
def test_shared_block_variants(variant, calls):
    config = ModelConfig.from_preset("zamba2", "tiny", shared=SHARED_VARIANTS[variant])
    _check(_perturbed(config, 2), torch.randint(0, 258, (2, 9)), calls)


def test_shared_block_with_an_activation_it_cannot_fuse_runs_eagerly(calls):
    config = ModelConfig.from_preset("zamba2", "tiny", shared={"activation": "relu"})
    _check(_perturbed(config, 3), torch.randint(0, 258, (1, 8)), calls, fused_shared=False)


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "silu"])
@pytest.mark.parametrize("gated", [True, False])
def test_fused_mlp_activations(activation, gated, calls):
    from hybridlm.layers.mlp import MLP
    from hybridlm.layers.norm import RMSNorm

    torch.manual_seed(4)
    mlp, norm = MLP(12, 20, activation, gated=gated), RMSNorm(12)
    x = 3 * torch.randn(3, 1, 12)  # wide enough to reach erf's and tanh's tails
    with torch.no_grad():
        fused = mlp.decode_token(x, norm)
    with kernels("reference"), torch.no_grad():
        expected = mlp(norm(x))
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-6)
    assert calls["mlp"] == 1


def test_lora_in_the_fused_mlp_equals_the_eager_delta():
    from hybridlm.layers.mlp import MLP
    from hybridlm.layers.shared import lora

    torch.manual_seed(5)
    mlp, adapter = MLP(12, 20, "gelu"), lora(12, 40, 3)
    nn.init.normal_(adapter[1].weight)
    x = torch.randn(2, 12)
    with torch.no_grad():
        expected = mlp(x, gate_up_delta=adapter(x))
        weights = decode_cpu.mlp_weights(None, mlp)[4:]  # the activation code and the linears' views
        out = torch.empty(2, 12).numpy()
        down, up = shared_step_cpu._adapter_views(adapter)
        decode_cpu.lora_mlp_into(x.numpy(), *weights, down, up, out)
    torch.testing.assert_close(torch.from_numpy(out), expected, rtol=1e-5, atol=1e-6)


def _shared_changes(model: HybridLM):
    """Ways the shared block's or a call site's weights change between two decoding runs."""
    site = next(layer.mixer for layer in model.layers if layer.char == "S")
    mamba2 = next(layer.mixer for layer in model.layers if layer.char == "D")
    block = model.shared_blocks[site.block_index]

    def in_place():
        with torch.no_grad():
            block.attention.v_proj.weight.mul_(2.0)
            block.mlp.up_proj.weight.mul_(-1.0)
            site.mlp_adapter[1].weight.add_(0.5)
            mamba2.in_proj.weight.mul_(1.5)

    def derived_A():
        with torch.no_grad():
            mamba2.A_log.add_(1.0)

    def replaced_parameter():
        site.attention_adapters[0][0].weight = nn.Parameter(torch.randn_like(site.attention_adapters[0][0].weight))
        block.ff_norm.weight = nn.Parameter(torch.full_like(block.ff_norm.weight, 2.0))
        mamba2.out_proj.weight = nn.Parameter(torch.randn_like(mamba2.out_proj.weight))

    def new_storage():
        site.linear.weight.data = torch.randn_like(site.linear.weight)
        mamba2.norm.weight.data = torch.randn_like(mamba2.norm.weight)

    def loaded():
        model.load_state_dict(_perturbed(model.config, 9).state_dict())

    return [in_place, derived_A, replaced_parameter, new_storage, loaded]


@pytest.mark.parametrize("change", range(5))
def test_weight_changes_reach_the_fused_steps(change):
    model = _perturbed(ModelConfig.from_preset("zamba2", "tiny"), change)
    tokens = torch.randint(0, 258, (1, 8))
    before = _decode(model, tokens)  # builds and caches the kernels' weight views
    _shared_changes(model)[change]()
    after = _decode(model, tokens)
    assert (after - before).abs().max() > 1e-3  # the change is visible ...
    assert (after - _reference_decode(model, tokens)).abs().max() <= TOLERANCE  # ... and exactly applied


def test_fused_steps_stand_aside_for_hooks(calls):
    model = _perturbed(ModelConfig.from_preset("zamba2", "tiny"), 6)
    tokens = torch.randint(0, 258, (1, 6))
    seen = []
    handle = model.shared_blocks[0].mlp.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    hooked = _decode(model, tokens)
    handle.remove()
    sites_on_block_0 = [layer.mixer.block_index for layer in model.layers if layer.char == "S"].count(0)
    assert len(seen) == 4 * sites_on_block_0  # prompt + 3 decoded tokens through the hooked MLP
    assert calls["project"] == 3 * (model.config.chars.count("S") - sites_on_block_0)
    assert (hooked - _reference_decode(model, tokens)).abs().max() <= TOLERANCE
