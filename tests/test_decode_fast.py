"""The fused decoding steps (ops/decode_cpu.py, ops/mamba_step_cpu.py) against the eager reference.

Each fused call replaces a pre-normed sub-layer's eager ops for one token; its views of the weights
must follow every way a weight changes (in place, an optimizer step, load_state_dict, a replaced
parameter), and it must stand aside under autograd and forward hooks.
"""

import copy

import pytest
import torch
from torch import nn

from hybridlm import HybridLM, ModelConfig
from hybridlm.ops.dispatch import kernels

from .decoding import count_calls, decode_one_at_a_time

pytest.importorskip("numba")

from hybridlm.ops import decode_cpu, mamba_step_cpu, moe_decode_cpu  # noqa: E402

TOLERANCE = 2e-5
FUSED_PRESETS = ("mamba", "jamba", "transformer", "zamba", "griffin")  # griffin: partial RoPE, (1 + w) norms


_decode = decode_one_at_a_time


def _reference_decode(model, tokens):
    with kernels("reference"):
        return _decode(model, tokens)


@pytest.fixture
def calls(monkeypatch):
    """How many times each fused kernel ran."""
    return count_calls(
        monkeypatch,
        {
            "mamba": (mamba_step_cpu, "_sublayer_step"),
            "mlp": (decode_cpu, "_mlp_step"),
            "project": (decode_cpu, "_norm_project"),
            "rms_norm": (decode_cpu, "_rms_norm"),
            "moe": (moe_decode_cpu, "_moe_token"),
        },
    )


@pytest.mark.parametrize("name", FUSED_PRESETS)
@pytest.mark.parametrize("batch", [1, 3])
def test_fused_decode_equals_reference_and_full_forward(name, batch, calls):
    torch.manual_seed(0)
    model = HybridLM(ModelConfig.from_preset(name, "tiny")).eval()
    tokens = torch.randint(0, 258, (batch, 11))
    fused = _decode(model, tokens)
    reference = _reference_decode(model, tokens)
    with torch.no_grad():
        full = model(tokens)[:, 3:]
    assert (fused - reference).abs().max() <= TOLERANCE
    assert (fused - full).abs().max() <= TOLERANCE
    chars = model.config.chars
    steps = tokens.shape[1] - 3
    assert calls["mamba"] == steps * chars.count("M")
    if model.config.mlp.activation in decode_cpu.ACTIVATION_CODES:  # the activations the fused MLP computes
        assert calls["mlp"] >= steps * chars.count("F")  # the prompt may run one-token experts too
    attention = chars.count("A") + chars.count("L")
    moe = model.config.moe  # an MoE's router and experts run in one fused call too, for few rows
    assert calls["moe"] == (steps * chars.count("E") if batch * moe.top_k <= moe.n_experts else 0)
    assert calls["project"] == steps * (1 + attention)  # the LM head, each attention's q, k, v


@pytest.mark.parametrize("gated", [True, False])
def test_offset_norm_and_biases(gated):
    """Gemma's (1 + w) norm, biased projections and an ungated MLP take the fused path with the same result."""
    overrides = {"norm_offset": True, "mlp": {"bias": True, "gated": gated}, "attention": {"qkv_bias": True}}
    config = ModelConfig.from_preset("transformer", "tiny", **overrides)
    model = HybridLM(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))  # nonzero biases and norm offsets
    tokens = torch.randint(0, 258, (2, 9))
    assert (_decode(model, tokens) - _reference_decode(model, tokens)).abs().max() <= TOLERANCE


def _changes(model: HybridLM):
    """Ways a weight changes between two decoding runs, each applied to the model in turn."""
    mamba = next(layer.mixer for layer in model.layers if layer.char == "M")
    mlp = next(layer.mixer for layer in model.layers if layer.char == "F")
    attention = next(layer.mixer for layer in model.layers if layer.char == "A")
    norm = next(layer.norm for layer in model.layers if layer.char == "M")

    def in_place():
        with torch.no_grad():
            mamba.in_proj.weight.mul_(1.5)
            mlp.up_proj.weight.mul_(-1.0)
            attention.v_proj.weight.mul_(2.0)
            norm.weight.add_(0.5)

    def derived_A():
        with torch.no_grad():
            mamba.A_log.add_(1.0)  # A = -exp(A_log) is the kernel's one copy

    def replaced_parameter():
        mamba.out_proj.weight = nn.Parameter(torch.randn_like(mamba.out_proj.weight))
        attention.k_proj.weight = nn.Parameter(torch.randn_like(attention.k_proj.weight))

    def new_storage():
        mlp.gate_proj.weight.data = torch.randn_like(mlp.gate_proj.weight)
        model.lm_head.weight.data = torch.randn_like(model.lm_head.weight)

    def loaded():
        other = HybridLM(model.config)
        model.load_state_dict(other.state_dict())

    def optimizer_step():
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        model.train()
        model(torch.randint(0, 258, (1, 6))).square().mean().backward()
        optimizer.step()
        model.eval()

    return [in_place, derived_A, replaced_parameter, new_storage, loaded, optimizer_step]


@pytest.mark.parametrize("change", range(6))
def test_weight_changes_reach_the_fused_step(change):
    torch.manual_seed(change)
    model = HybridLM(ModelConfig.from_preset("jamba", "tiny")).eval()
    tokens = torch.randint(0, 258, (1, 8))
    before = _decode(model, tokens)  # builds and caches the kernels' weight views
    _changes(model)[change]()
    after = _decode(model, tokens)
    assert (after - before).abs().max() > 1e-3  # the change is visible ...
    assert (after - _reference_decode(model, tokens)).abs().max() <= TOLERANCE  # ... and exactly applied


def test_copies_decode_their_own_weights():
    torch.manual_seed(1)
    model = HybridLM(ModelConfig.from_preset("mamba", "tiny")).eval()
    tokens = torch.randint(0, 258, (1, 8))
    original = _decode(model, tokens)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in twin.parameters():
            parameter.mul_(0.5)
    assert (_decode(twin, tokens) - _reference_decode(twin, tokens)).abs().max() <= TOLERANCE
    assert torch.equal(_decode(model, tokens), original)


def test_fused_step_stands_aside_for_hooks_and_autograd(calls):
    torch.manual_seed(2)
    model = HybridLM(ModelConfig.from_preset("jamba", "tiny")).eval()
    tokens = torch.randint(0, 258, (1, 6))
    seen = []
    handle = model.layers[0].mixer.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    _decode(model, tokens)
    handle.remove()
    assert len(seen) == 4  # prompt + 3 decoded tokens, all through the hooked forward
    assert calls["mamba"] == 3 * (model.config.chars.count("M") - 1)
    before = dict(calls)
    logits = model(tokens[:, :1])  # one token with grad enabled: the eager path, differentiable
    logits.sum().backward()
    assert calls == before
    assert model.layers[0].mixer.in_proj.weight.grad is not None


@pytest.mark.parametrize("name", ["jamba", "zamba2", "mamba2"])
def test_a_hook_on_a_linear_inside_a_fused_mixer_still_runs(name):
    """The fused steps replace the mixers' linears too: a hook on one of them sends its sub-layer
    down the eager path, which calls it, with the same logits."""
    torch.manual_seed(3)
    model = HybridLM(ModelConfig.from_preset(name, "tiny")).eval()
    tokens = torch.randint(0, 258, (1, 7))
    expected = _decode(model, tokens)
    hooked = [layer.mixer for layer in model.layers if layer.char in "AMDES"]
    linears = [next(m for m in mixer.modules() if isinstance(m, nn.Linear)) for mixer in hooked]
    seen = []
    handles = [linear.register_forward_hook(lambda *_: seen.append(1)) for linear in linears]
    logits = _decode(model, tokens)
    for handle in handles:
        handle.remove()
    assert len(seen) >= 4 * len(linears)  # prompt + 3 decoded tokens through every hooked linear
    assert (logits - expected).abs().max() <= TOLERANCE


def test_rms_norm_of_one_token_is_fused_only_for_an_fp32_weight(calls):
    from hybridlm.layers.norm import RMSNorm

    x = torch.randn(2, 1, 12)
    for offset in (False, True):
        for dtype in (torch.float32, torch.bfloat16):  # bf16 weights cannot be viewed as fp32: eager
            norm = RMSNorm(12, offset=offset)
            with torch.no_grad():
                norm.weight.add_(0.3 * torch.randn(12))
            norm = norm.to(dtype)
            expected = norm(x).detach()  # grad enabled: the eager path
            with torch.no_grad():
                torch.testing.assert_close(norm(x), expected, rtol=1e-5, atol=1e-6)
    assert calls["rms_norm"] == 2  # the two fp32 norms
