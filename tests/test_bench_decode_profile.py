"""The decode-profile suite's floor: the weight bytes one token reads and the read-bandwidth probe."""

import numpy as np
import pytest

from hybridlm import HybridLM, ModelConfig
from hybridlm.bench import decode_profile


def test_weight_bytes_count_active_experts_and_a_tied_head_once():
    model = HybridLM(ModelConfig.from_preset("jamba", "tiny"))
    moe = next(layer.mixer for layer in model.layers if layer.char == "E")
    per_expert = sum(p.numel() for p in moe.experts[0].parameters())
    all_weights = sum(p.numel() for p in model.parameters())
    unused = per_expert * (moe.n_experts - moe.top_k) * model.config.chars.count("E")
    assert model.lm_head.weight is model.embed_tokens.weight  # tied: the head reads the whole table
    assert decode_profile.decode_weight_bytes(model) == 4 * (all_weights - unused)


def test_the_plain_reader_reads_every_element():
    pytest.importorskip("numba")
    values = np.arange(1 << 16, dtype=np.float32) % 7
    assert decode_profile._plain_sum()(values) == pytest.approx(float(values.sum()), rel=1e-6)


def test_the_gemv_loop_multiplies_every_matrix_in_turn():
    pytest.importorskip("numba")
    from numba import typed

    rng = np.random.default_rng(0)
    matrices = [rng.standard_normal(shape).astype(np.float32) for shape in ((300, 40), (7, 96))]
    x = rng.standard_normal((1, 96)).astype(np.float32)
    out = np.zeros((1, 300), np.float32)
    decode_profile._gemv_each()(typed.List(matrices), x, out)  # the second overwrites the first's rows 0-6
    np.testing.assert_allclose(out[0, :7], matrices[1] @ x[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[0, 7:], matrices[0][7:] @ x[0, :40], rtol=1e-5, atol=1e-5)


def test_the_gemv_row_streams_every_matrix_of_the_model():
    pytest.importorskip("numba")
    row = decode_profile.gemv_stream_row("mamba", "tiny", rounds=1)
    model = HybridLM(ModelConfig.from_preset("mamba", "tiny"))
    matrix_bytes = sum(p.numel() * 4 for p in model.parameters() if p.dim() == 2)
    assert row.notes["MB"] == pytest.approx(matrix_bytes / 1e6)
    assert row.ours > 0 and row.baseline > 0 and row.baseline_name == "plain read"
