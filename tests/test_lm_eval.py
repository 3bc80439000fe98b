"""lm-evaluation-harness itself, through `python -m hybridlm.lm_eval`, on the tiny local tasks in
tests/data/lm_eval (multiple choice, generation, perplexity), on a hybrid the Hugging Face export
refuses: every score equals what hybridlm computes directly on the same strings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hybridlm
from hybridlm import ByteTokenizer, ConfigError, HybridLM

pytest.importorskip("lm_eval")

from hybridlm.lm_eval.scoring import generate_until, sampling_settings, score_continuations  # noqa: E402

from .helpers import tiny_config  # noqa: E402

TASKS = Path(__file__).parent / "data" / "lm_eval"
TOKENIZER = ByteTokenizer()


def rf_af_model():
    torch.manual_seed(0)
    return HybridLM(tiny_config(pattern="(RF AF)*1", vocab_size=258, init_std=0.3)).eval()


def direct_logprob(model, context: str, continuation: str) -> float:
    """log p(continuation | context) from one unpadded forward pass."""
    context_ids, ids = TOKENIZER.encode(context), TOKENIZER.encode(context + continuation)
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids[:-1]]))[0].float(), -1)
    targets = torch.tensor(ids[len(context_ids) :])
    return float(logprobs[len(context_ids) - 1 :].gather(-1, targets.unsqueeze(-1)).sum())


def direct_generation(model, context: str, until: list[str], max_tokens: int) -> str:
    ids = torch.tensor(TOKENIZER.encode(context))
    new = model.generate([ids], max_tokens, temperature=0, stop_tokens=[TOKENIZER.eos_id])[0][len(ids) :]
    text = TOKENIZER.decode([token for token in new.tolist() if token != TOKENIZER.eos_id])
    return min((text[: text.index(stop)] for stop in until if stop in text), key=len, default=text)


def test_left_padded_batches_score_as_single_rows():
    model = rf_af_model()
    pairs = [
        (TOKENIZER.encode(c), TOKENIZER.encode(x)) for c, x in [("ab", " c"), ("a longer context", " x y"), ("q", "z")]
    ]
    batched = score_continuations(model, pairs, batch_size=3, max_length=64)
    single = score_continuations(model, pairs, batch_size=1, max_length=64)
    for (got, greedy), (want, want_greedy) in zip(batched, single):
        assert got == pytest.approx(want, abs=1e-4) and greedy == want_greedy
    assert batched[1][0] == pytest.approx(direct_logprob(model, "a longer context", " x y"), abs=1e-4)


def test_generation_stops_at_the_first_stop_string():
    model = rf_af_model()
    contexts = ["Q: hi\nA:", "x"]
    texts = generate_until(model, TOKENIZER, [TOKENIZER.encode(c) for c in contexts], ["e", "\n"], 12)
    assert texts == [direct_generation(model, c, ["e", "\n"], 12) for c in contexts]


@pytest.mark.parametrize(
    ("kwargs", "sampling"),
    [
        ({"until": ["\n"], "do_sample": False, "temperature": 0.8}, {"temperature": 0.0}),
        ({"temperature": 0.8, "top_k": 3}, {"temperature": 0.0}),  # transformers: greedy without do_sample
        ({"do_sample": True}, {"temperature": 1.0, "top_k": 50, "top_p": None}),  # was greedy
        ({"do_sample": True, "top_k": 0, "top_p": 1.0}, {"temperature": 1.0, "top_k": None, "top_p": None}),
        (
            {"do_sample": True, "temperature": 0.7, "top_k": 5, "top_p": 0.9},
            {"temperature": 0.7, "top_k": 5, "top_p": 0.9},
        ),
    ],
)
def test_generation_kwargs_are_read_as_transformers_reads_them(kwargs, sampling):
    assert sampling_settings(kwargs) == sampling


def test_sampling_applies_top_k_and_top_p():
    model = rf_af_model()
    contexts = [TOKENIZER.encode(c) for c in ("Q: hi\nA:", "x", "the cat")]
    greedy = [direct_generation(model, c, [], 12) for c in ("Q: hi\nA:", "x", "the cat")]
    assert generate_until(model, TOKENIZER, contexts, [], 12, temperature=1.0, top_k=1, seed=0) == greedy
    assert generate_until(model, TOKENIZER, contexts, [], 12, temperature=1.0, top_p=1e-9, seed=0) == greedy
    assert generate_until(model, TOKENIZER, contexts, [], 12, temperature=1.0, seed=0) != greedy


def test_unsupported_generation_settings_are_refused(tmp_path):
    from types import SimpleNamespace

    from hybridlm.lm_eval.backend import HybridLMEval

    hybridlm.save(rf_af_model(), tmp_path / "run")
    lm = HybridLMEval(pretrained=str(tmp_path / "run"))
    request = SimpleNamespace(args=("Q: hi", {"until": ["\n"], "num_beams": 4}))
    with pytest.raises(ValueError, match=r"generation settings \['num_beams'\] are not supported"):
        lm.generate_until([request])


@pytest.fixture(scope="module")
def lm_eval_run(tmp_path_factory):
    """Results and samples of one `python -m hybridlm.lm_eval run` over the three local tasks."""
    root = tmp_path_factory.mktemp("lm_eval")
    model = rf_af_model()
    hybridlm.save(model, root / "run")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_DATASETS_CACHE=str(root / "datasets"))
    command = [sys.executable, "-m", "hybridlm.lm_eval", "run", "--model", "hybridlm"]
    command += ["--model_args", f"pretrained={root / 'run'},batch_size=4", "--include_path", str(TASKS)]
    command += ["--tasks", "hybridlm_tiny_mc,hybridlm_tiny_gen,hybridlm_tiny_ppl", "--device", "cpu"]
    command += ["--output_path", str(root / "out"), "--log_samples"]
    result = subprocess.run(command, cwd=TASKS, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(next((root / "out").rglob("results_*.json")).read_text())["results"]
    samples = {}
    for path in (root / "out").rglob("samples_*.jsonl"):
        task = path.name.removeprefix("samples_").rsplit("_", 1)[0]
        samples[task] = [json.loads(line) for line in path.read_text().splitlines()]
    return model, results, samples


def test_the_hf_export_refuses_this_hybrid():
    from hybridlm.hf import hf_config

    with pytest.raises(ConfigError):
        hf_config(rf_af_model().config)


def test_multiple_choice_scores_equal_direct_loss(lm_eval_run):
    model, results, samples = lm_eval_run
    correct = []
    for sample in samples["hybridlm_tiny_mc"]:
        doc, context = sample["doc"], f"Q: {sample['doc']['question']}\nA:"
        want = [direct_logprob(model, context, " " + choice) for choice in doc["choices"]]
        got = [float(resp[0]) for resp in sample["filtered_resps"]]
        assert got == pytest.approx(want, abs=1e-4)
        correct.append(int(max(range(len(want)), key=want.__getitem__) == doc["answer"]))
        assert sample["acc"] == correct[-1]
    assert len(correct) == 6
    assert results["hybridlm_tiny_mc"]["acc,none"] == pytest.approx(sum(correct) / len(correct))


def test_generate_until_equals_direct_greedy_generation(lm_eval_run):
    model, results, samples = lm_eval_run
    for sample in samples["hybridlm_tiny_gen"]:
        context = f"Q: {sample['doc']['question']}\nA:"
        assert sample["filtered_resps"][0] == direct_generation(model, context, ["\n", "Q:"], 8)
    exact = [sample["filtered_resps"][0].strip() == sample["doc"]["answer"] for sample in samples["hybridlm_tiny_gen"]]
    assert results["hybridlm_tiny_gen"]["exact_match,none"] == pytest.approx(sum(exact) / len(exact))


def test_rolling_loglikelihood_equals_direct_loss(lm_eval_run):
    model, results, samples = lm_eval_run
    total, n_bytes = 0.0, 0
    for sample in samples["hybridlm_tiny_ppl"]:
        text = sample["doc"]["text"]
        ids = [TOKENIZER.eos_id, *TOKENIZER.encode(text)]
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([ids[:-1]]))[0].float(), -1)
        want = float(logprobs.gather(-1, torch.tensor(ids[1:]).unsqueeze(-1)).sum())
        assert float(sample["filtered_resps"][0]) == pytest.approx(want, abs=1e-4)
        total, n_bytes = total + want, n_bytes + len(text.encode())
    bits_per_byte = -total / n_bytes / torch.log(torch.tensor(2.0)).item()
    assert results["hybridlm_tiny_ppl"]["bits_per_byte,none"] == pytest.approx(bits_per_byte, rel=1e-5)
