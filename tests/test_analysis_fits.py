"""Scaling-law fits, effective context length, and the `hybridlm analyze` command."""

import csv
import json

import numpy as np
import pytest
import torch

from hybridlm import HybridLM
from hybridlm.analysis.context_length import answer_loss, effective_context_length
from hybridlm.analysis.plots import plot_context_curve
from hybridlm.analysis.scaling import fit_by_ratio, fit_scaling_law, load_results
from hybridlm.cli import main

from .helpers import tiny_config

# Exponents per attention ratio r for the synthetic sweep; the rest of the law is shared.
TRUE_ALPHA = {0.0: 0.30, 0.5: 0.40}
TRUE_BETA, A, B, L_INF = 0.28, 400.0, 410.0, 1.7


def _synthetic_sweep(noise: float = 0.005, seed: int = 0) -> list[dict]:
    """Runs on a 7 x 7 grid of N in [1e6, 1e9] and D in [1e8, 1e11], loss from the law times (1 + noise)."""
    rng = np.random.default_rng(seed)
    rows = []
    for ratio, alpha in TRUE_ALPHA.items():
        for params in np.logspace(6, 9, 7):
            for tokens in np.logspace(8, 11, 7):
                loss = A / params**alpha + B / tokens**TRUE_BETA + L_INF
                rows.append(
                    {
                        "params": params,
                        "tokens": tokens,
                        "loss": loss * (1 + noise * rng.standard_normal()),
                        "attention_ratio": ratio,
                    }
                )
    return rows


# ---- scaling fits -----------------------------------------------------------------------------------
def test_fit_recovers_known_exponents_from_noisy_runs():
    fits = fit_by_ratio(_synthetic_sweep())
    assert list(fits) == [0.0, 0.5]
    for ratio, fit in fits.items():
        assert fit.alpha == pytest.approx(TRUE_ALPHA[ratio], abs=0.02)
        assert fit.beta == pytest.approx(TRUE_BETA, abs=0.03)
        assert fit.L_inf == pytest.approx(L_INF, abs=0.15)
        assert 0 < fit.stderr["alpha"] < 0.02 and fit.n_points == 49
    assert fits[0.5].alpha - fits[0.0].alpha > 5 * (fits[0.0].stderr["alpha"] + fits[0.5].stderr["alpha"])


def test_fit_is_exact_without_noise():
    rows = [row for row in _synthetic_sweep(noise=0.0) if row["attention_ratio"] == 0.0]
    fit = fit_scaling_law([r["params"] for r in rows], [r["tokens"] for r in rows], [r["loss"] for r in rows])
    assert (fit.alpha, fit.beta, fit.L_inf) == pytest.approx((0.30, TRUE_BETA, L_INF), rel=1e-4)
    assert fit.predict(1e7, 1e9) == pytest.approx(A / 1e7**0.3 + B / 1e9**TRUE_BETA + L_INF, rel=1e-6)


def test_fit_needs_more_runs_than_coefficients():
    with pytest.raises(ValueError, match="at least 6 runs"):
        fit_scaling_law([1e6] * 5, [1e9] * 5, [3.0] * 5)
    with pytest.raises(ValueError, match="no 'tokens' column"):
        fit_by_ratio([{"params": 1, "loss": 2, "attention_ratio": 0}])


def test_results_load_from_csv_json_and_json_lines(tmp_path):
    rows = _synthetic_sweep()[:3]
    with open(tmp_path / "runs.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (tmp_path / "runs.json").write_text(json.dumps(rows))
    (tmp_path / "runs.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    for name in ("runs.csv", "runs.json", "runs.jsonl"):
        loaded = load_results(tmp_path / name)
        assert [float(row["loss"]) for row in loaded] == pytest.approx([row["loss"] for row in rows])


def test_analyze_scaling_fit_cli(capsys, tmp_path):
    diverged = {**_synthetic_sweep()[0], "loss": None, "diverged": "step 2: non-finite loss"}  # left out
    (tmp_path / "sweep.json").write_text(json.dumps([*_synthetic_sweep(), diverged]))
    plot = tmp_path / "scaling.png"
    code = main(["analyze", "--scaling-fit", str(tmp_path / "sweep.json"), "--json", "--plot", str(plot)])
    fits = json.loads(capsys.readouterr().out)
    assert code == 0 and fits["0.5"]["alpha"] == pytest.approx(0.40, abs=0.02)
    assert plot.read_bytes()[:4] == b"\x89PNG"


# ---- effective context length -------------------------------------------------------------------------
def _two_local_layers():
    """Two windowed attention layers, w = 4, no position encoding: the last output depends on exactly
    the last 2 (w - 1) + 1 = 7 tokens, so k_T = 7 for any eps below the loss change at k = 6."""
    config = tiny_config(pattern="LF LF", init_std=0.3, attention={"window": 4, "rope": False})
    return HybridLM(config).eval()


@pytest.mark.parametrize("answer_length", [1, 3])
def test_effective_context_length_of_a_known_receptive_field(answer_length):
    model = _two_local_layers()
    sequences = torch.randint(0, 50, (8, 20))
    curve = effective_context_length(model, sequences, answer_length, eps=1e-5, contexts=list(range(1, 18)))
    assert curve.effective_length == 7
    assert curve.contexts[-1] == 20 - answer_length
    assert all(abs(loss - curve.full_loss) <= 1e-5 for loss in curve.losses[6:])
    assert abs(curve.losses[5] - curve.full_loss) > 1e-3  # k = 6 misses a token the answer depends on


def test_full_attention_needs_the_whole_context():
    model = HybridLM(tiny_config(pattern="AF", init_std=0.3, attention={"rope": False})).eval()
    sequences = torch.randint(0, 50, (8, 17))
    curve = effective_context_length(model, sequences, eps=1e-6)
    assert curve.contexts == [1, 2, 4, 8, 16] and curve.effective_length == 16


def test_answer_loss_is_the_cross_entropy_of_the_answer_tokens():
    model = _two_local_layers()
    sequences = torch.randint(0, 50, (3, 12))
    with torch.no_grad():
        logits = model(sequences[:, 2:-1])[:, -2:]
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 50), sequences[:, -2:].reshape(-1))
    assert answer_loss(model, sequences, answer_length=2, context=8) == pytest.approx(float(expected), rel=1e-6)


def test_context_curve_plot(tmp_path):
    curve = effective_context_length(_two_local_layers(), torch.randint(0, 50, (2, 12)), eps=1e-5)
    assert plot_context_curve(curve, tmp_path / "k.png").read_bytes()[:4] == b"\x89PNG"


# ---- hybridlm analyze ----------------------------------------------------------------------------------
def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_analyze_json_for_a_paper_preset(capsys):
    code, out, _ = run(
        capsys, "analyze", "jamba", "--size", "paper", "--seq-len", "262144", "--dtype", "bfloat16", "--json"
    )
    (report,) = json.loads(out)
    assert code == 0 and report["params"]["total"] == 51_570_323_328 and report["active_params"] < 13e9
    assert report["cache"]["kv_formula_bytes"] == 4 * 2**30
    assert report["cache"]["by_kind"]["attention"]["count"] == 4
    assert report["flops"]["training_per_token"] == pytest.approx(3 * report["flops"]["prefill_per_token"])


def test_analyze_simplified_reproduces_the_seed(capsys):
    argv = ["analyze", "(A)*24", "(M M M M A M M M)*3", "(M)*24", "--set", "d_model=2048", "--set", "n_heads=16"]
    code, out, _ = run(capsys, *argv, "--seq-len", "8192", "--simplified", "--csv")
    rows = list(csv.DictReader(out.splitlines()))
    assert code == 0 and [int(row["simplified_bytes"]) for row in rows] == [3_221_225_472, 402_825_216, 196_608]


def test_analyze_several_targets_and_lengths_with_a_plot(capsys, tmp_path):
    plot = tmp_path / "cost.png"
    code, out, _ = run(
        capsys, "analyze", "transformer", "hawk", "--size", "tiny", "--seq-len", "64", "512", "--plot", str(plot)
    )
    assert code == 0 and out.count("transformer (tiny)") == 2 and out.count("hawk (tiny)") == 2
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_analyze_text_report_and_reference_tables(capsys):
    code, out, _ = run(capsys, "analyze", "samba", "--size", "tiny", "--seq-len", "100")
    assert code == 0 and "local_attention" in out and "KV by the papers' formula" in out
    code, out, _ = run(capsys, "analyze", "--reference")
    assert code == 0 and "402,825,216" in out and "137,438,953,472 (128.00 GiB)" in out


@pytest.mark.parametrize(
    "argv, message",
    [(["analyze"], "at least one preset"), (["analyze", "mamba", "--seq-len", "0"], "must be >= 1")],
)
def test_analyze_user_errors(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err
