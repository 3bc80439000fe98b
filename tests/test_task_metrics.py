"""k_T and r_T (`hybridlm context`) on tasks whose answer is known: tiny models trained in seconds
find MQAR's values by content (r_T >> 1) and a fixed-offset copy's tokens by position (r_T << 1);
an untrained model depends on neither (r_T ~ 1), so the test cannot pass by construction."""

import json

import pytest
import torch

from hybridlm import HybridLM, ModelConfig, save
from hybridlm.analysis.content_position import (
    content_position_dependence,
    perturb_content,
    perturb_position,
    sample_answers,
)
from hybridlm.cli import main
from hybridlm.data.synthetic import MQAR, Lag

MQAR_SETTINGS = ["vocab_size=32", "seq_len=16", "n_pairs=2"]
LAG_SETTINGS = ["vocab_size=16", "seq_len=16", "lag=3"]


def _train(tmp_path, name, pattern, task, settings, steps, *flags):
    out = tmp_path / name
    args = ["train", pattern, "--set", "d_model=32", "--set", "n_heads=2", "--set", "vocab_size=32", *flags]
    args += ["--task", task, *[f"--task-set={s}" for s in settings], "--steps", str(steps), "--lr", "0.01"]
    assert main([*args, "--warmup-steps", "10", "--log-every", str(steps), "--out", str(out)]) == 0
    return out


def _metrics(capsys, directory) -> dict:
    capsys.readouterr()
    assert main(["context", str(directory), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_mqar_is_content_dominant_and_lag_position_dominant(capsys, tmp_path):
    torch.set_num_threads(1)
    mqar = _train(tmp_path, "mqar", "A A", "mqar", MQAR_SETTINGS, 150, "--set", "attention.short_conv=3")
    assert "accuracy 0.9" in capsys.readouterr().out  # learned (measured 0.992)
    result = _metrics(capsys, mqar)
    assert result["r_T"]["ratio"] > 10  # measured 39: replacing the keys ruins it, moving the pair does not
    assert result["r_T"]["content_increase"] > 2 and result["r_T"]["position_increase"] < 0.5
    assert result["k_T"] == 15  # the key sits at the start: only the whole prefix reaches the full loss

    lag = _train(tmp_path, "lag", "A", "lag", LAG_SETTINGS, 100)
    result = _metrics(capsys, lag)
    assert result["r_T"]["ratio"] < 0.1  # measured 0.0012: moving the source ruins it, new content does not
    assert result["r_T"]["position_increase"] > 2 and result["r_T"]["content_increase"] < 0.2
    contexts, losses = result["context"]["contexts"], result["context"]["losses"]
    assert all(loss > losses[-1] + 2 for k, loss in zip(contexts, losses) if k <= 3)  # x[t-3] not in view
    assert result["k_T"] > 3


@pytest.mark.parametrize("task", [MQAR(vocab_size=32, seq_len=16, n_pairs=2), Lag(vocab_size=16, seq_len=16, lag=3)])
def test_an_untrained_model_depends_on_neither(task):
    torch.manual_seed(0)
    model = HybridLM(ModelConfig(pattern="A A", d_model=32, n_heads=2, vocab_size=32))
    assert 0.3 < content_position_dependence(model, task).ratio < 3


def test_perturbations_keep_the_route_they_promise():
    answers = sample_answers(MQAR(vocab_size=32, seq_len=16, n_pairs=2), n_batches=1, batch_size=16, seed=0)
    g = torch.Generator().manual_seed(0)
    content, moved = perturb_content(answers, 32, g), perturb_position(answers, g)
    for row in range(16):
        t, s = int(answers.positions[row]), int(answers.sources[row])
        original = answers.inputs[row]
        assert content[row, s] == original[s] and torch.equal(content[row, t:], original[t:])
        assert (content[row, :t] != original[:t]).sum() > t // 2  # the rest of the context is fresh noise
        assert torch.equal(moved[row, t:], original[t:]) and sorted(moved[row].tolist()) == sorted(original.tolist())
        key, value = original[s - 1 : s + 1].tolist()
        pairs = list(zip(moved[row, :t].tolist(), moved[row, 1 : t + 1].tolist()))
        assert (key, value) in pairs  # the key-value pair survives, elsewhere
        assert moved[row, s] != value or moved[row, s - 1] != key


def test_context_refuses_text_and_bad_flags(capsys, tmp_path):
    save(HybridLM(ModelConfig(pattern="A", d_model=16, n_heads=2, vocab_size=32)), tmp_path / "m")
    assert main(["context", str(tmp_path / "m"), "--task", "text"]) == 2
    assert main(["context", str(tmp_path / "m"), "--task", "lag", "--eps", "-1"]) == 2
    assert main(["context", str(tmp_path / "m"), "--task", "lag", "--task-set", "lags=2"]) == 2
    assert "did you mean 'lag'?" in capsys.readouterr().err
