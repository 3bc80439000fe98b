"""Presets: tiny ones train a step, paper ones match the published parameter counts."""

import pytest
import torch

from hybridlm import HybridLM, ModelConfig, presets
from hybridlm.analysis.params import active_parameters, build_meta, layer_rows, params_by_type

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("name", presets())
def test_tiny_preset_forward_backward(name):
    config = ModelConfig.from_preset(name, "tiny")
    model = HybridLM(config)
    assert model.num_parameters() < 1_000_000
    tokens = torch.randint(0, config.vocab_size, (2, 32))
    logits = model(tokens)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()) + model.aux_loss()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", presets())
def test_small_preset_is_cpu_sized(name):
    assert 10_000_000 <= build_meta(ModelConfig.from_preset(name, "small")).num_parameters() <= 30_000_000


@pytest.mark.parametrize("name", presets())
@pytest.mark.parametrize("size", ["tiny", "paper"])
def test_inspect_rows_sum_to_distinct_parameters(name, size):
    model = build_meta(ModelConfig.from_preset(name, size))
    distinct = {id(p): p.numel() for p in model.parameters()}
    assert sum(row.params for row in layer_rows(model)) == sum(distinct.values())
    assert params_by_type(model)["total"] == sum(distinct.values())


def _hf_count(config_class, model_class, **fields) -> int:
    with torch.device("meta"):
        model = getattr(transformers, model_class)(getattr(transformers, config_class)(**fields))
    return sum(p.numel() for p in model.parameters())


# The same published shapes, built by transformers on the meta device (counts verified equal).
HF_EQUIVALENTS = {
    "transformer": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            vocab_size=32000,
            tie_word_embeddings=False,
        ),
    ),
    "mamba": (
        "MambaConfig",
        "MambaForCausalLM",
        dict(
            hidden_size=2560, num_hidden_layers=64, vocab_size=50280, state_size=16, expand=2, tie_word_embeddings=True
        ),
    ),
    "mamba2": (
        "Mamba2Config",
        "Mamba2ForCausalLM",
        dict(
            hidden_size=2560,
            num_hidden_layers=64,
            vocab_size=50288,
            state_size=128,
            head_dim=64,
            num_heads=80,
            n_groups=1,
            expand=2,
            tie_word_embeddings=True,
        ),
    ),
    "jamba": ("JambaConfig", "JambaForCausalLM", {}),  # the defaults are Jamba-v0.1
    "zamba": ("ZambaConfig", "ZambaForCausalLM", {}),  # the defaults are Zamba-7B
    "zamba2": (
        "Zamba2Config",
        "Zamba2ForCausalLM",
        dict(
            n_mamba_heads=80,
            num_mem_blocks=2,
            use_shared_mlp_adapter=True,
            use_shared_attention_adapter=False,
            adapter_rank=128,
        ),
    ),
    "griffin": (
        "RecurrentGemmaConfig",
        "RecurrentGemmaForCausalLM",
        dict(
            hidden_size=4096,
            lru_width=5632,
            intermediate_size=2 * 12288,
            num_attention_heads=32,
            num_key_value_heads=1,
            num_hidden_layers=32,
            vocab_size=256000,
            attention_window_size=1024,
        ),
    ),
    "hawk": (
        "RecurrentGemmaConfig",
        "RecurrentGemmaForCausalLM",
        dict(
            hidden_size=4096,
            lru_width=5632,
            intermediate_size=2 * 12288,
            num_attention_heads=32,
            num_key_value_heads=1,
            num_hidden_layers=32,
            vocab_size=256000,
            block_types=["recurrent"],
        ),
    ),
}


@pytest.mark.parametrize("name", HF_EQUIVALENTS)
def test_paper_preset_count_equals_transformers(name):
    config_class, model_class, fields = HF_EQUIVALENTS[name]
    ours = build_meta(ModelConfig.from_preset(name, "paper")).num_parameters()
    assert ours == _hf_count(config_class, model_class, **fields)


# Stated in the model card / paper: StripedHyena-7B "7.65B" (togethercomputer/StripedHyena-Hessian-7B),
# Samba "421M" (microsoft/Samba, Samba_421M).
@pytest.mark.parametrize("name, stated", [("stripedhyena", 7.65e9), ("samba", 421e6)])
def test_paper_preset_within_two_percent_of_stated(name, stated):
    ours = build_meta(ModelConfig.from_preset(name, "paper")).num_parameters()
    assert abs(ours - stated) / stated < 0.02


def test_jamba_paper_total_and_active_match_the_model_card():
    model = build_meta(ModelConfig.from_preset("jamba", "paper"))
    assert abs(model.num_parameters() - 52e9) / 52e9 < 0.02  # "52B total"
    assert abs(active_parameters(model) - 12e9) / 12e9 < 0.02  # "12B active"


def test_blend_paper_is_its_parts():
    config = ModelConfig.from_preset("blend", "paper")
    parts = {}
    for pattern in ("(MF)*12", "(AF)*12"):
        parts[pattern] = build_meta(config.with_overrides({"pattern": pattern})).num_parameters()
    shared = build_meta(config.with_overrides({"pattern": "(F)*12"})).num_parameters()  # embeddings, norms, MLPs
    alphas = 12 * config.d_model
    norms = 12 * config.d_model  # one pre-norm per mixer, counted in both parts
    total = parts["(MF)*12"] + parts["(AF)*12"] - shared - norms + alphas
    assert build_meta(config).num_parameters() == total
