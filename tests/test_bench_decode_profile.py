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
