"""Per-bucket accuracy, exact match and the depth x length grid, measured on brute-force oracles
whose right and wrong answers are known, then through the CLI on a saved model."""

import json

import torch

from hybridlm import HybridLM, ModelConfig, save
from hybridlm.cli import main
from hybridlm.data.synthetic import Passkey
from hybridlm.evaluate import bucket_range, depth_length_grid, task_report


class PasskeyOracle(torch.nn.Module):
    """Reads the queried key, scans for its needle and emits its digits, but only when the needle
    starts before `reach` tokens (a model with a limited memory); otherwise it emits digit 0."""

    def __init__(self, reach: int, vocab: int = 64):
        super().__init__()
        self.reach, self.vocab = reach, vocab

    def forward(self, inputs):
        logits = torch.zeros(*inputs.shape, self.vocab)
        width = 6
        for b, row in enumerate(inputs.tolist()):
            query = len(row) - width
            key = row[query + 1]
            start = next(i for i in range(query) if row[i] == Passkey.NEEDLE and row[i + 1] == key)
            digits = row[start + 2 : start + width] if start < self.reach else [0] * 4
            for offset, digit in enumerate(digits):
                logits[b, query + 1 + offset, digit] = 1.0
        return logits


def test_bucket_ranges():
    assert [bucket_range("gap", v) for v in (1, 2, 3, 4, 7, 8)] == [(1, 1), (2, 3), (2, 3), (4, 7), (4, 7), (8, 15)]
    assert [bucket_range("depth", v) for v in (0, 19, 20, 79, 80, 100)] == [
        (0, 19),
        (0, 19),
        (20, 39),
        (60, 79),
        (80, 100),
        (80, 100),
    ]


def test_task_report_buckets_count_what_the_oracle_got_right():
    task = Passkey(seq_len=106)  # haystack 100, needle starts 0..94: depth percent = start / 94
    report = task_report(PasskeyOracle(reach=47), task, batch_size=16, n_batches=4, seed=0)
    depth = {(b["from"], b["to"]): b for b in report["buckets"]["depth"]}
    assert depth[0, 19]["exact_match"] == depth[20, 39]["exact_match"] == 1.0
    assert depth[60, 79]["accuracy"] < 0.2 and depth[80, 100]["accuracy"] < 0.2  # only chance zeros
    assert 0 < depth[40, 59]["exact_match"] < 1
    assert sum(b["answers"] for b in depth.values()) == 4 * 16 * 4 and sum(b["sequences"] for b in depth.values()) == 64
    batches = [task.batch(16, 0, i, "test") for i in range(4)]
    starts = [int(b.sources[r, 101]) - 2 for b in batches for r in range(16)]
    assert report["eval_exact_match"] == sum(s < 47 for s in starts) / 64  # brute force over the sequences


def test_grid_sees_the_needle_fall_out_of_reach_with_depth_and_length():
    cells = depth_length_grid(
        PasskeyOracle(reach=40),
        Passkey,
        {},
        [0.0, 0.5, 1.0],
        [32, 64, 128],
        "seq_len",
        batch_size=4,
        n_batches=1,
        seed=0,
    )
    exact = {(c["depth"], c["seq_len"]): c["exact_match"] for c in cells}
    # needle start = depth * (seq_len - 12): 0 always in reach, 10 and 20 at 32, 26 and 52 at 64, 58 and 116 at 128
    assert exact == {
        (0.0, 32): 1.0,
        (0.5, 32): 1.0,
        (1.0, 32): 1.0,
        (0.0, 64): 1.0,
        (0.5, 64): 1.0,
        (1.0, 64): 0.0,
        (0.0, 128): 1.0,
        (0.5, 128): 0.0,
        (1.0, 128): 0.0,
    }


def test_eval_cli_grid_and_buckets(capsys, tmp_path):
    torch.manual_seed(0)
    config = ModelConfig(pattern="A", d_model=16, n_heads=2, vocab_size=64)
    save(HybridLM(config), tmp_path / "m")
    flags = ["--task", "passkey", "--task-set", "seq_len=32", "--batch-size", "2", "--batches", "1"]
    assert main(["eval", str(tmp_path / "m"), *flags, "--grid", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["trained_length"] == 32 and len(result["grid"]) == 5 * 4
    assert {c["seq_len"] for c in result["grid"]} == {32, 64, 128, 256}  # lengths beyond training
    assert main(["eval", str(tmp_path / "m"), *flags, "--grid", "--lengths", "32,48", "--depths", "0,1"]) == 0
    out = capsys.readouterr().out
    assert "seq_len 32 (trained)" in out and "seq_len 48" in out
    mqar = ["--task", "mqar", "--task-set", "vocab_size=64", "--task-set", "seq_len=32", "--task-set", "n_pairs=4"]
    assert main(["eval", str(tmp_path / "m"), *mqar, "--batches", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert sum(b["answers"] for b in result["buckets"]["gap"]) == 16 * 4 and "eval_exact_match" in result
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "m"), *mqar, "--batches", "1"]) == 0  # the table: no per-gap exact match
    table = capsys.readouterr().out
    assert "nan" not in table and "gap    answers  accuracy\n" in table
    assert main(["eval", str(tmp_path / "m"), *flags]) == 0  # a needle's depth has one
    assert "depth   answers  accuracy  exact match" in capsys.readouterr().out
    assert main(["eval", str(tmp_path / "m"), *mqar, "--grid"]) == 2
    assert "--grid is for the depth-controlled tasks" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "m"), "--task", "mqar", "--task-set", "n_pair=3"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'n_pairs'?" in err and err.count("\n") == 1
