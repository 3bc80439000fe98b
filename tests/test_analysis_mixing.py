"""Token-mixing matrices: for every mixer, M x is what the layer computes."""

import json

import pytest
import torch

from hybridlm import HybridLM, ModelConfig
from hybridlm.analysis.mixing import layer_mixing, mixing_matrices, mixing_summary
from hybridlm.analysis.probe import record_sublayers
from hybridlm.cli import main
from hybridlm.ops.fftconv import fft_causal_conv
from hybridlm.ops.selective_scan import selective_scan_ref
from hybridlm.ops.ssd import ssd_ref

from .helpers import MIXER_CASES, tiny_config

LENGTH = 24
CASES = {name: tiny_config(**fields) for name, fields in MIXER_CASES.items()}
CASES.update({f"preset-{name}": ModelConfig.from_preset(name, "tiny") for name in ("jamba", "zamba2", "griffin")})


def _strong_mixing(char):
    """A one-mixer model with large weights (std 0.5) and SSM steps (dt in [0.1, 1]), so that mixing, not
    the skip D x, makes most of the output (at the default init it is a small correction)."""
    steps = {"dt_min": 0.1, "dt_max": 1.0}
    return tiny_config(pattern=char, init_std=0.5, mamba=steps, mamba2=steps)


def _mixings(config, row=1):
    model = HybridLM(config).eval()
    tokens = torch.randint(0, config.vocab_size, (2, LENGTH))
    return model, layer_mixing(model, tokens, row=row)


@torch.no_grad()
def _errors_by_layer(mixings, transform=lambda m: m):
    """{sub-layer: (max |readout(M values) - output|, max |readout(M values) - readout(0)|)}.

    The second number is the size of what mixing contributes (the skip D x can dominate an SSM
    layer's output), so errors are judged against it. The blend's two parts add up to its output."""
    outputs, baselines, references = {}, {}, {}
    for mixing in mixings:
        operator = mixing.operator
        matrices = [transform(operator.matrix(slice(g, g + 1))) for g in range(operator.n_groups)]
        mixed = torch.cat([m @ operator.values[g : g + 1].double() for g, m in enumerate(matrices)])
        outputs[mixing.index] = outputs.get(mixing.index, 0) + operator.readout(mixed)
        baselines[mixing.index] = baselines.get(mixing.index, 0) + operator.readout(torch.zeros_like(mixed))
        references[mixing.index] = mixing.output
    return {
        index: (
            float((outputs[index] - references[index]).abs().max()),
            float((outputs[index] - baselines[index]).abs().max()),
        )
        for index in outputs
    }


@pytest.mark.parametrize("name", sorted(CASES))
def test_readout_of_mixing_matrix_times_values_is_the_mixer_output(name):
    _, mixings = _mixings(CASES[name])
    scales = {mixing.index: float(mixing.output.abs().max()) for mixing in mixings}
    for index, (error, contribution) in _errors_by_layer(mixings).items():
        assert contribution > 0 and error <= 1e-5 * scales[index]


def _diagonal_only(matrix):
    return torch.diag_embed(torch.diagonal(matrix, dim1=1, dim2=2))


@pytest.mark.parametrize("char", "MDRHA")
def test_a_wrong_matrix_does_not_reproduce_the_output(char):
    """The check above can fail: keeping only the diagonal changes the outputs by a large fraction."""
    _, mixings = _mixings(_strong_mixing(char))
    for error, contribution in _errors_by_layer(mixings, _diagonal_only).values():
        assert error > 0.05 * contribution


@pytest.mark.parametrize("char", "MDRH")
def test_ssm_matrices_reproduce_the_scans(char):
    """M x (skip D x excluded) against the plain scans: selective scan, SSD, RG-LRU, FFT convolution."""
    model = HybridLM(_strong_mixing(char)).eval()
    (call,) = record_sublayers(model, torch.randint(0, 50, (1, LENGTH)))
    mixer, u, ctx = call.module, call.x, call.ctx
    (operator,) = mixer.mixing_operators(u, ctx)
    with torch.no_grad():
        if char == "M":
            x, _, dt, B, C, _ = mixer.scan_inputs(u, ctx)
            scan, _ = selective_scan_ref(x, dt, -torch.exp(mixer.A_log.float()), B, C)
            expected = scan[0].T.unsqueeze(-1)  # (d_in, N, 1)
        elif char == "D":
            x, _, dt, B, C, _ = mixer.scan_inputs(u, ctx)
            heads, groups = mixer.n_heads, mixer.options.n_groups
            scan, _ = ssd_ref(
                x.view(1, LENGTH, heads, -1),
                dt,
                -torch.exp(mixer.A_log.float()),
                B.view(1, LENGTH, groups, -1),
                C.view(1, LENGTH, groups, -1),
            )
            expected = scan[0].transpose(0, 1)  # (h, N, p)
        elif char == "R":
            x, _ = mixer.conv(mixer.linear_x(u))
            states, _ = mixer.rg_lru(x, ctx.positions)
            expected = states[0].T.unsqueeze(-1)
        else:
            _, k, v = mixer.short_conv(mixer.in_proj(u))[0].chunk(3, dim=-1)
            expected = fft_causal_conv(k * v, mixer.filter(LENGTH))[0].T.unsqueeze(-1)
        mixed = operator.mixed()
    assert expected.abs().max() > 0.1  # a real signal, not rounding noise
    assert (mixed.float() - expected).abs().max() <= 1e-6 * expected.abs().max()  # fp32 rounding


def test_attention_matrix_rows_are_probabilities_inside_the_window():
    config = tiny_config(pattern="L", attention={"window": 5})
    _, (mixing,) = _mixings(config)
    probs = mixing.operator.matrix()
    assert torch.allclose(probs.sum(-1), torch.ones_like(probs.sum(-1)))
    t, s = torch.meshgrid(torch.arange(LENGTH), torch.arange(LENGTH), indexing="ij")
    assert (probs[:, (t - s >= 5) | (s > t)] == 0).all()


def test_hyena_matrix_is_the_toeplitz_matrix_of_its_filter():
    model, (mixing,) = _mixings(tiny_config(pattern="H"))
    kernel = model.layers[0].mixer.filter(LENGTH).double()
    matrix = mixing.operator.matrix()
    for lag in (0, 1, 7, LENGTH - 1):
        assert torch.equal(
            torch.diagonal(matrix, offset=-lag, dim1=1, dim2=2), kernel[:, lag : lag + 1].expand(-1, LENGTH - lag)
        )


def test_mean_over_channels_is_accumulated_in_chunks():
    _, (mixing,) = _mixings(tiny_config(pattern="M"))
    operator = mixing.operator
    full = operator.matrix()
    operator.chunk = 5  # fewer channels per chunk than d_inner = 64
    assert torch.allclose(operator.reduced(), full.mean(0))
    assert torch.equal(operator.reduced(3), full[3])
    with pytest.raises(ValueError, match="channels"):
        operator.reduced(64)


def test_summary_of_a_diagonal_and_a_uniform_matrix():
    assert mixing_summary(torch.eye(8)) == {"mean_distance": 0.0, "local_share": 1.0}
    uniform = mixing_summary(torch.tril(torch.ones(8, 8)))  # 36 entries, distances summing to 84
    assert uniform["mean_distance"] == pytest.approx(84 / 36) and uniform["local_share"] == pytest.approx(26 / 36)


def test_mixing_matrices_choose_layers_and_refuse_ffns():
    config = ModelConfig.from_preset("jamba", "tiny")
    model = HybridLM(config).eval()
    tokens = torch.randint(0, 256, (1, 12))
    pairs = mixing_matrices(model, tokens, layers=[8, 0])
    assert [(m.index, m.kind, tuple(matrix.shape)) for m, matrix in pairs] == [
        (8, "attention", (12, 12)),
        (0, "mamba", (12, 12)),
    ]
    with pytest.raises(ValueError, match="not a mixer"):
        mixing_matrices(model, tokens, layers=[1])


def test_inspect_mixing_cli(capsys, tmp_path):
    plot = tmp_path / "mixing.png"
    code = main(["inspect", "griffin", "--size", "tiny", "--mixing", "--seq-len", "16", "--json", "--plot", str(plot)])
    rows = json.loads(capsys.readouterr().out)
    assert code == 0 and [row["kind"] for row in rows] == ["rglru", "rglru", "local_attention"]
    assert torch.tensor(rows[2]["matrix"]).sum(-1).allclose(torch.ones(16))
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["inspect", "griffin", "--size", "tiny", "--mixing", "--layers", "1"]) == 2
    assert "not a mixer" in capsys.readouterr().err
