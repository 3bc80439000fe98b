"""Gradient flow through depth, memory length of SSM states, MoE routing statistics."""

import json
import logging
import math

import pytest
import torch
import torch.nn.functional as F

from hybridlm import HybridLM, ModelConfig
from hybridlm.analysis.gradient_flow import gradient_flow
from hybridlm.analysis.memory_length import memory_lengths
from hybridlm.analysis.routing import layer_routing, route, routing_metrics, routing_report
from hybridlm.cli import main
from hybridlm.layers.context import Context
from hybridlm.layers.moe import RouterStats

from .helpers import tiny_config


def _inverse_softplus(value: float) -> float:
    return value + math.log(-math.expm1(-value))


# ---- gradient flow ---------------------------------------------------------------------------------
def test_gradient_norms_equal_autograd_through_a_plain_loop():
    model = HybridLM(tiny_config(pattern="MF AF RF")).eval()
    tokens = torch.randint(0, 50, (2, 12))
    loss, rows = gradient_flow(model, tokens)
    ctx = Context(positions=torch.arange(12).expand(2, 12))
    x = model.embed_tokens(tokens)
    inputs = []
    for layer in model.layers:  # HybridLM.forward for a pattern without S, soft-cap or embedding scale
        inputs.append(x)
        x = x + layer(x, None, ctx)
    inputs.append(x)
    logits = model.lm_head(model.final_norm(x))
    expected_loss = F.cross_entropy(logits[:, :-1].reshape(-1, 50), tokens[:, 1:].reshape(-1))
    grads = torch.autograd.grad(expected_loss, inputs)
    assert loss == pytest.approx(float(expected_loss.detach()), rel=1e-6)
    assert [row.kind for row in rows] == ["mamba", "mlp", "attention", "mlp", "rglru", "mlp", "final_norm"]
    for row, grad in zip(rows, grads):
        assert row.grad_norm == pytest.approx(float(grad.norm()), rel=1e-5)
        assert row.per_token == pytest.approx(row.grad_norm / math.sqrt(24))


def test_gradient_flow_leaves_parameters_and_mode_untouched():
    model = HybridLM(ModelConfig.from_preset("zamba", "tiny")).train()
    _, rows = gradient_flow(model, torch.randint(0, 256, (1, 8)))
    assert model.training and all(p.grad is None for p in model.parameters())
    assert len(rows) == len(model.layers) + 1 and all(row.grad_norm > 0 for row in rows)
    for index, char in enumerate(model.config.chars[:-1]):
        if char == "S":  # S adds nothing to the stream: the next mixer sees the same x
            assert rows[index + 1].grad_norm == rows[index].grad_norm


# ---- memory length ---------------------------------------------------------------------------------
def _single(model, length=16):
    rows = memory_lengths(model, torch.randint(0, 50, (1, length)))
    assert len(rows) == 1
    return rows[0], model.layers[0].mixer


def test_mamba_half_lives_with_a_constant_step():
    """dt = 0.25 everywhere and A = -(1..n): half-life ln 2 / (0.25 n) for state n, every channel."""
    model = HybridLM(tiny_config(pattern="M")).eval()
    mixer = model.layers[0].mixer
    with torch.no_grad():
        mixer.dt_proj_weight.zero_()
        mixer.dt_proj_bias.fill_(_inverse_softplus(0.25))
    row, _ = _single(model)
    expected = (math.log(2) / (0.25 * torch.arange(1, 5, dtype=torch.float64))).repeat(64)
    assert row.unit == "channel x state" and torch.allclose(row.half_lives, expected, rtol=1e-6)


def test_mamba2_half_lives_with_a_constant_step():
    model = HybridLM(tiny_config(pattern="D")).eval()
    mixer = model.layers[0].mixer
    with torch.no_grad():
        mixer.in_proj.weight[-mixer.n_heads :].zero_()  # the dt columns
        mixer.dt_bias.fill_(_inverse_softplus(0.5))
    row, _ = _single(model)
    expected = math.log(2) / (0.5 * torch.exp(mixer.A_log.double()))
    assert row.unit == "head" and torch.allclose(row.half_lives, expected, rtol=1e-6)


def test_rglru_half_life_is_where_an_impulse_response_halves():
    """With constant gates, the layer's own recurrence decays an impulse by a per step: a^half_life = 1/2."""
    model = HybridLM(tiny_config(pattern="R")).eval()
    mixer = model.layers[0].mixer
    with torch.no_grad():
        mixer.rg_lru.recurrent_gate_weight.zero_()  # r_t = sigmoid(0) = 1/2 for every token
    row, _ = _single(model)
    impulse = torch.zeros(1, 10, mixer.width)
    impulse[:, 1] = 1.0  # token 0 resets the state; the impulse enters at token 1
    with torch.no_grad():
        states, _ = mixer.rg_lru(impulse, torch.arange(10).unsqueeze(0))
    per_step = states[0, 9] / states[0, 8]
    assert torch.allclose(per_step.double() ** row.half_lives, torch.full_like(row.half_lives, 0.5), rtol=1e-4)


def test_hyena_half_life_is_where_the_filter_envelope_halves():
    model = HybridLM(tiny_config(pattern="H", hyena={"n_modes": 1})).eval()
    mixer = model.layers[0].mixer
    with torch.no_grad():
        mixer.pole_theta.zero_()
        mixer.residue.copy_(torch.tensor([1.0, 0.0]))  # h_t = |p|^t
    row, _ = _single(model)
    kernel = mixer.filter(2).double()
    assert torch.allclose(row.half_lives, math.log(2) / -torch.log(kernel[:, 1] / kernel[:, 0]), rtol=1e-5)


def test_memory_lengths_cover_ssm_layers_only():
    model = HybridLM(ModelConfig.from_preset("blend", "tiny")).eval()
    rows = memory_lengths(model, torch.randint(0, 256, (1, 8)))
    assert [(row.index, row.kind) for row in rows] == [(0, "blend:mamba"), (2, "blend:mamba")]
    quantiles = rows[0].quantiles()
    assert quantiles["min"] <= quantiles["median"] <= quantiles["max"] == float(rows[0].half_lives.max())


# ---- MoE routing -------------------------------------------------------------------------------------
def _stats(load, n_tokens=100):
    load = torch.tensor(load, dtype=torch.float32)
    mean_prob = load / load.sum()
    entropy = -(mean_prob * mean_prob.clamp_min(1e-12).log()).sum()
    return RouterStats(load=load, mean_prob=mean_prob, entropy=entropy, aux=len(load) * (load * mean_prob).sum())


def test_balanced_routing():
    row = layer_routing(3, _stats([0.5, 0.5, 0.5, 0.5]), top_k=2)
    assert row.load_entropy == pytest.approx(1.0) and row.router_entropy == pytest.approx(1.0)
    assert row.max_load_ratio == pytest.approx(1.0) and row.aux == pytest.approx(2.0)
    assert not row.collapsed and row.dead_experts == 0


@pytest.mark.parametrize(
    "load, top_k, load_entropy, dead",
    [([1.0, 0.0, 0.0, 0.0], 1, 0.0, 3), ([1.0, 1.0, 0.0, 0.0], 2, 0.5, 2), ([0.97, 0.01, 0.01, 0.01], 1, 0.121, 0)],
)
def test_collapsed_routing(load, top_k, load_entropy, dead):
    row = layer_routing(0, _stats(load), top_k=top_k)
    assert row.load_entropy == pytest.approx(load_entropy, abs=1e-3) and row.dead_experts == dead
    assert row.collapsed


def test_routing_report_reads_every_moe_layer_and_warns_on_collapse(caplog):
    model = HybridLM(ModelConfig.from_preset("jamba", "tiny")).eval()
    rows = route(model, torch.randint(0, 256, (2, 32)))
    moe_indices = [i for i, c in enumerate(model.config.chars) if c == "E"]
    assert [row.index for row in rows] == moe_indices
    stats = model.layers[moe_indices[0]].mixer.stats
    assert rows[0].load == pytest.approx(stats.load.tolist()) and sum(rows[0].load) == pytest.approx(2.0)
    probs = torch.tensor([[0.6, 0.4, 0.0, 0.0]]).repeat(16, 1)  # every token routed to experts 0 and 1
    model.layers[moe_indices[1]].mixer._routing = (probs, torch.tensor([[0, 1]]).repeat(16, 1), None)
    with caplog.at_level(logging.WARNING, logger="hybridlm.analysis.routing"):
        rows = routing_report(model)
    assert rows[1].collapsed and f"MoE sub-layer {moe_indices[1]} is collapsing" in caplog.text
    metrics = routing_metrics(rows)
    assert metrics["moe/collapsed_layers"] >= 1 and metrics["moe/min_load_entropy"] == pytest.approx(0.5)
    assert metrics[f"moe/{moe_indices[0]}/aux"] == rows[0].aux


# ---- command line --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flag, preset, key",
    [("--gradient-flow", "griffin", "layers"), ("--memory-length", "mamba2", None), ("--routing", "jamba", None)],
)
def test_inspect_analyses_cli(capsys, tmp_path, flag, preset, key):
    plot = tmp_path / "figure.png"
    code = main(["inspect", preset, "--size", "tiny", flag, "--seq-len", "12", "--json", "--plot", str(plot)])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and plot.read_bytes()[:4] == b"\x89PNG"
    assert len(data[key] if key else data) > 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["inspect", "transformer", "--size", "tiny", "--memory-length"], "no SSM-type layer"),
        (["inspect", "hawk", "--size", "tiny", "--routing"], "no MoE layer"),
        (["inspect", "jamba", "--size", "paper", "--mixing"], "never allocated"),
        (["inspect", "jamba", "--size", "tiny", "--plot", "x.png"], "--plot needs an analysis"),
    ],
)
def test_inspect_analysis_errors_exit_2(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
