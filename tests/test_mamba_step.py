"""The fused Mamba-1 decoding step (ops/mamba_step_cpu.py): its softplus and GEMV against plain references,
and whole decodes against the eager reference and the full forward for state sizes on and off its
16-lane vectors (the tiny presets' n = 8 never reaches them), several heads, inner norms, batch > 1."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hybridlm import HybridLM, ModelConfig
from hybridlm.ops.dispatch import kernels

from .decoding import count_calls, decode_one_at_a_time

pytest.importorskip("numba")

from numba import njit  # noqa: E402

from hybridlm.ops import decode_cpu, mamba_step_cpu  # noqa: E402

TOLERANCE = 2e-5  # as tests/test_decode_fast.py


@njit(fastmath=True, error_model="numpy")
def _softplus_all(a, out):
    for i in range(a.size):
        out[i] = mamba_step_cpu._softplus(a[i])


def test_softplus_matches_float64_and_torchs_threshold():
    a = np.concatenate(
        [np.linspace(-100, 100, 200_001, dtype=np.float32), np.float32([0.0, -0.0, 1e-30, -1e-30, 17.0, 20.0, 88.0])]
    )
    out = np.empty_like(a)
    _softplus_all(a, out)
    expected = F.softplus(torch.from_numpy(a).double()).numpy()
    # 2e-7 relative from the exp polynomial; below -87 e^a is clamped to e^-87 (1.6e-38)
    assert np.all(np.abs(out - expected) <= 1e-6 * expected + 2e-38)
    above = a >= 20
    assert np.array_equal(out[above], a[above])  # torch returns a itself above its threshold 20
    assert np.all(out > 0)


@pytest.mark.parametrize(
    "rows, width, batch, biased", [(1, 5, 1, False), (7, 33, 3, True), (56, 384, 1, False), (9, 4, 2, True)]
)
def test_gemv_matches_matmul(rows, width, batch, biased):
    generator = np.random.default_rng(rows)
    weight = generator.standard_normal((rows, width)).astype(np.float32)
    bias = generator.standard_normal(rows).astype(np.float32) if biased else np.zeros(0, np.float32)
    x = generator.standard_normal((batch, width + 3)).astype(np.float32)  # read from column 3 on
    out = np.full((batch, rows + 3), np.nan, np.float32)  # written from column 2 on
    decode_cpu.gemv_rows(weight, bias, x, 3, out, 2)
    expected = x[:, 3:].astype(np.float64) @ weight.T.astype(np.float64) + (bias if biased else 0.0)
    np.testing.assert_allclose(out[:, 2:-1], expected, rtol=1e-5, atol=1e-5)
    assert np.isnan(out[:, :2]).all() and np.isnan(out[:, -1]).all()  # nothing outside its columns


_decode = decode_one_at_a_time


@pytest.fixture
def steps_run(monkeypatch):
    """How many fused sub-layer steps and per-mixer steps ran."""
    return count_calls(
        monkeypatch,
        {"sublayer": (mamba_step_cpu, "_sublayer_step"), "mixer": (mamba_step_cpu, "mamba_decode_step")},
    )


# n = 16 and 32: whole vectors; 20: one vector and 4 states one by one; 5: none
@pytest.mark.parametrize(
    "d_state, n_heads, inner_norms, batch", [(16, 1, False, 1), (20, 2, True, 3), (32, 1, False, 2), (5, 2, False, 1)]
)
@pytest.mark.parametrize("hooked", [False, True])  # a forward hook: the per-mixer step instead of the sub-layer's
def test_fused_decode_equals_reference_and_full_forward(d_state, n_heads, inner_norms, batch, hooked, steps_run):
    torch.manual_seed(d_state)
    mamba = {"d_state": d_state, "n_heads": n_heads, "inner_norms": inner_norms}
    model = HybridLM(ModelConfig.from_preset("mamba", "tiny", mamba=mamba)).eval()
    if hooked:
        for layer in model.layers:
            layer.mixer.register_forward_hook(lambda module, args, out: None)
    tokens = torch.randint(0, 258, (batch, 10))
    fused = _decode(model, tokens)
    with kernels("reference"):
        reference = _decode(model, tokens)
    with torch.no_grad():
        full = model(tokens)[:, 3:]
    assert (fused - reference).abs().max() <= TOLERANCE
    assert (fused - full).abs().max() <= TOLERANCE
    expected = 7 * len(model.layers)
    assert steps_run == ({"sublayer": 0, "mixer": expected} if hooked else {"sublayer": expected, "mixer": 0})


def test_in_place_change_of_dt_proj_reaches_its_transposed_copy():
    """The kernel reads dt_proj transposed, a copy: an in-place change of the parameter must rebuild it."""
    from hybridlm.layers.context import Context

    torch.manual_seed(7)
    model = HybridLM(ModelConfig.from_preset("mamba", "tiny", mamba={"d_state": 16})).eval()
    layer = model.layers[0]
    tokens = torch.randn(4, 1, 1, model.config.d_model)

    def run(change_before_last: bool, backend: str):
        weight = layer.mixer.dt_proj_weight
        original = weight.detach().clone()
        state = layer.mixer.allocate_state(1, None, "cpu", torch.float32)
        with kernels(backend), torch.inference_mode():
            for index, u in enumerate(tokens):
                if change_before_last and index == len(tokens) - 1:
                    weight.add_(30 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
                ctx = Context(positions=None, valid=None, embeddings=u, shared={})
                out = layer(u, state, ctx)
        with torch.no_grad():
            weight.copy_(original)
        return out

    before, after = run(False, ""), run(True, "")
    reference = run(True, "reference")
    assert (after - reference).abs().max() <= 1e-5 * after.abs().max()
    assert (after - before).abs().max() > 0.01 * after.abs().max()
