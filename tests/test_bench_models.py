"""`hybridlm bench models`: identical weights on both sides, alternated timings, all three workloads."""

import tempfile

import pytest
import torch

from hybridlm.bench.hf_twin import transformers_twin
from hybridlm.bench.models import model_rows
from hybridlm.bench.timing import alternated_times
from hybridlm.model import HybridLM
from hybridlm.presets import preset_config

pytest.importorskip("transformers")


@pytest.mark.slow  # 17 s on 2 cores; `make test-slow`
def test_rows_compare_identical_weights_on_training_prefill_and_decode():
    rows = model_rows(("mamba2",), prefill_length=32, new_tokens=4, train_shape=(1, 16), repeats=1)
    assert [row.name for row in rows] == [
        "mamba2 tiny training step 1x16",
        "mamba2 tiny prefill 1x32",
        "mamba2 tiny greedy decode 4 tokens",
    ]
    for row in rows:
        assert row.notes["max_logit_diff"] < 1e-4
        assert row.ours > 0 and row.baseline > 0
    assert rows[-1].notes["same_tokens_first_32"] is True


def test_alternated_times_runs_each_side_in_turn():
    calls = []
    alternated_times(lambda: calls.append("a"), lambda: calls.append("b"), repeats=2, warmup=1)
    assert calls == ["a", "b"] * 3


def test_the_transformers_twin_has_our_logits_and_leaves_no_folder_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    torch.manual_seed(0)
    ours = HybridLM(preset_config("mamba", "tiny")).eval()
    theirs = transformers_twin(ours).eval()
    tokens = torch.randint(0, 256, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(theirs(tokens).logits, ours(tokens), rtol=1e-4, atol=1e-4)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("hybridlm-")] == []  # torch may add its own


@pytest.mark.parametrize("preset, switched", [("mamba", True), ("griffin", False)])
def test_the_mambapy_switch_reaches_only_the_families_that_have_it(preset, switched):
    """RecurrentGemma (like Mamba2 and Zamba2) has no `use_mambapy`: asking for it must not break the load."""
    torch.manual_seed(0)
    theirs = transformers_twin(HybridLM(preset_config(preset, "tiny")), use_mambapy=True)
    assert getattr(theirs.config, "use_mambapy", False) is switched


def test_a_row_without_a_timing_shows_none():
    """A notes-only row (context's KV bytes) prints no time and gives null in JSON, not "0.0 ms"."""
    from hybridlm.bench.report import format_rows
    from hybridlm.bench.timing import Row

    row = Row("context", "KV bytes: jamba", None, None, "", 0, {"kv_bytes": 4259840})
    assert "0.0 ms" not in format_rows([row]) and "kv_bytes=4259840" in format_rows([row])
    assert row.to_dict()["ours_s"] is None and row.ratio is None
