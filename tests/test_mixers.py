"""Every mixer and FFN: shape, causality, gradients, determinism."""

import pytest
import torch

from hybridlm import HybridLM

from .helpers import FFT_CASES, MIXER_CASES, tiny_config


@pytest.mark.parametrize("case", MIXER_CASES)
def test_output_shape(case):
    model = HybridLM(tiny_config(**MIXER_CASES[case]))
    assert model(torch.randint(0, 50, (3, 11))).shape == (3, 11, 50)


@pytest.mark.parametrize("case", MIXER_CASES)
def test_causality(case):
    """Changing tokens after t leaves every output at positions <= t unchanged."""
    model = HybridLM(tiny_config(**MIXER_CASES[case])).eval()
    tokens = torch.randint(0, 50, (2, 24))
    changed = tokens.clone()
    changed[:, 13:] = torch.randint(0, 50, (2, 11))
    with torch.no_grad():
        before, after = model(tokens)[:, :13], model(changed)[:, :13]
    if case in FFT_CASES:
        assert (before - after).abs().max() <= 1e-6 * before.abs().max()
    else:
        assert torch.equal(before, after)


def _zero_by_design(name: str, model: HybridLM) -> bool:
    """A LoRA down-matrix gets no gradient while its up-matrix is zero (as initialised); an expert no
    token chose gets a zero gradient (it still runs, on zero tokens)."""
    if ".experts." in name:
        layer, expert = name.split(".")[1], int(name.split(".experts.")[1].split(".")[0])
        return float(model.layers[int(layer)].mixer.stats.load[expert]) == 0.0
    if "adapter" not in name or not name.endswith("0.weight"):
        return False
    up = model.get_parameter(name[: -len("0.weight")] + "1.weight")
    return bool((up == 0).all())


@pytest.mark.parametrize("case", MIXER_CASES)
def test_every_parameter_gets_a_finite_gradient(case):
    model = HybridLM(tiny_config(**MIXER_CASES[case]))
    logits = model(torch.randint(0, 50, (4, 16)))
    (logits.float().pow(2).mean() + model.aux_loss()).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(parameter.grad).all(), name
        if not _zero_by_design(name, model):
            assert parameter.grad.abs().sum() > 0, f"{name} has a zero gradient"


@pytest.mark.parametrize("case", MIXER_CASES)
def test_deterministic_under_seed(case):
    tokens = torch.randint(0, 50, (2, 9))
    outputs = []
    for _ in range(2):
        torch.manual_seed(1234)
        outputs.append(HybridLM(tiny_config(**MIXER_CASES[case]))(tokens))
    assert torch.equal(*outputs)


def test_shared_block_feeds_the_next_mixer_not_the_residual():
    """x + M(Norm(x + t)): removing the M after S changes nothing that t alone could reach."""
    model = HybridLM(tiny_config(pattern="SM")).eval()
    with torch.no_grad():
        model.layers[1].mixer.out_proj.weight.zero_()  # M now outputs 0 whatever its input
        tokens = torch.randint(0, 50, (1, 7))
        embedded = model.embed_tokens(tokens)
        expected = model.lm_head(model.final_norm(embedded))
        assert torch.allclose(model(tokens), expected, atol=1e-6)


def test_shared_blocks_cycle_and_count_once():
    config = tiny_config(pattern="(SM)*3", shared={"n_blocks": 2})
    model = HybridLM(config)
    assert [layer.mixer.block_index for layer in model.layers if layer.char == "S"] == [0, 1, 0]
    unique = {id(p) for p in model.parameters()}
    assert model.num_parameters() == sum(p.numel() for p in model.parameters() if id(p) in unique)
    block = sum(p.numel() for p in model.shared_blocks[0].parameters())
    without = HybridLM(tiny_config(pattern="(M)*3")).num_parameters()
    per_invocation = 32 * 32  # the d x d output linear
    embeddings_norms = 0
    assert model.num_parameters() == without + 2 * block + 3 * per_invocation + embeddings_norms


def test_blend_alpha_is_per_channel_and_mixes():
    model = HybridLM(tiny_config(pattern="P")).eval()
    blend = model.layers[0].mixer
    assert blend.alpha.shape == (32,) and torch.allclose(blend.alpha, torch.full((32,), 0.5))
    x = torch.randn(2, 5, 32)
    from hybridlm.layers.context import Context

    ctx = Context(positions=torch.arange(5).expand(2, 5))
    with torch.no_grad():
        blend.alpha_logit.fill_(30.0)
        assert torch.allclose(blend(x, None, ctx), blend.ssm(x, None, ctx), atol=1e-6)
        blend.alpha_logit.fill_(-30.0)
        assert torch.allclose(blend(x, None, ctx), blend.attention(x, None, ctx), atol=1e-6)


def test_local_attention_sees_exactly_window_keys():
    """With window w, the output at t depends on tokens t-w+1..t only (through one L layer)."""
    model = HybridLM(tiny_config(pattern="L", attention={"window": 4, "rope": False})).eval()
    tokens = torch.randint(0, 50, (1, 12))
    changed = tokens.clone()
    changed[0, 3] = (tokens[0, 3] + 1) % 50
    with torch.no_grad():
        diff = (model(tokens) - model(changed)).abs().amax(-1)[0]
    assert (diff[3:7] > 0).all() and (diff[7:] == 0).all() and (diff[:3] == 0).all()


def test_rglru_a_power_c_is_initialised_in_range():
    model = HybridLM(tiny_config(pattern="R"))
    lru = model.layers[0].mixer.rg_lru
    a_pow_c = torch.exp(-lru.c * torch.nn.functional.softplus(lru.a_param))
    assert a_pow_c.min() >= 0.9 - 1e-6 and a_pow_c.max() <= 0.999 + 1e-6


def test_mamba_init_follows_the_paper():
    config = tiny_config(pattern="M", mamba={"d_state": 6})
    mamba = HybridLM(config).layers[0].mixer
    assert torch.allclose(-torch.exp(mamba.A_log), -torch.arange(1, 7.0).expand(64, 6))
    dt = torch.nn.functional.softplus(mamba.dt_proj_bias)
    assert dt.min() >= config.mamba.dt_init_floor and dt.max() <= config.mamba.dt_max * 1.0001
    assert mamba.dt_rank == 2  # ceil(32 / 16)


def test_hyena_poles_inside_unit_circle():
    hyena = HybridLM(tiny_config(pattern="H")).layers[0].mixer
    log_radius, _ = hyena.poles()
    assert (log_radius < 0).all()
