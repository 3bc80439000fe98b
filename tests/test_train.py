"""Training: synthetic data as pure functions, exact resume, checkpoints that describe themselves."""

import json
import os
import subprocess
import sys

import pytest
import torch

import hybridlm
from hybridlm.data.synthetic import IGNORE, MQAR, InductionHeads, Passkey, SelectiveCopy
from hybridlm.train import TrainConfig, learning_rate, train

from .helpers import tiny_config


def test_mqar_values_follow_their_keys():
    task = MQAR(vocab_size=64, seq_len=48, n_pairs=6)
    batch = task.batch(8, seed=3, index=5)
    assert torch.equal(batch.inputs, task.batch(8, seed=3, index=5).inputs)  # a pure function
    assert not torch.equal(batch.inputs, task.batch(8, seed=3, index=5, split="test").inputs)
    for row, targets in zip(batch.inputs, batch.targets):
        pairs = dict(zip(row[0:12:2].tolist(), row[1:12:2].tolist()))
        assert len(pairs) == 6 and all(1 <= k < 32 <= v < 64 for k, v in pairs.items())
        asked = (targets != IGNORE).nonzero().flatten()
        assert len(asked) == 6 and (asked >= 12).all()
        assert all(pairs[int(row[p])] == int(targets[p]) for p in asked)


@pytest.mark.parametrize("task", [Passkey(seq_len=40), InductionHeads(seq_len=30)])
def test_recall_tasks_ask_for_tokens_present_earlier(task):
    batch = task.batch(4, seed=0, index=0)
    for row, targets in zip(batch.inputs, batch.targets):
        asked = (targets != IGNORE).nonzero().flatten()
        assert len(asked) > 0
        for position in asked:
            assert int(targets[position]) in row[: int(position) + 1].tolist()


def test_selective_copy_asks_for_the_data_tokens_in_order():
    batch = SelectiveCopy(seq_len=40, n_tokens=5).batch(4, seed=0, index=0)
    for row, targets in zip(batch.inputs, batch.targets):
        data = row[:35][row[:35] >= 2]  # data tokens among the noise (0), before the 5 SEP markers (1)
        assert torch.equal(row[35:], torch.ones(5, dtype=torch.long))
        assert torch.equal(targets[35:], data) and (targets[:35] == IGNORE).all()


def test_learning_rate_schedule():
    config = TrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert learning_rate(0, config) == pytest.approx(0.1)
    assert learning_rate(9, config) == pytest.approx(1.0)
    assert learning_rate(99, config) == pytest.approx(0.1, abs=1e-3)


def _train_config(**fields):
    base = dict(
        task="mqar",
        task_settings={"vocab_size": 50, "seq_len": 24, "n_pairs": 4},
        steps=8,
        batch_size=8,
        log_every=2,
        eval_batches=2,
        warmup_steps=2,
    )
    return TrainConfig(**{**base, **fields})


def test_training_reduces_loss():
    result = train(tiny_config(pattern="R A"), _train_config(steps=40, lr=3e-3))
    assert result.metrics[-1]["loss"] < result.metrics[0]["loss"] - 0.3


def test_resume_continues_exactly(tmp_path):
    config = tiny_config(pattern="M A E", moe={"n_experts": 4, "top_k": 2})
    train(config, _train_config(steps=8), out=tmp_path / "straight")
    train(config, _train_config(steps=8), out=tmp_path / "resumed", stop_at=4)  # as if killed after step 4
    train(config, _train_config(steps=8), out=tmp_path / "resumed", resume=True)
    straight, resumed = hybridlm.load(tmp_path / "straight"), hybridlm.load(tmp_path / "resumed")
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    state = json.loads((tmp_path / "resumed" / "trainer_state.json").read_text())
    assert state["step"] == 8 and [m["step"] for m in state["metrics"]] == [2, 4, 6, 8]


def test_resume_refuses_a_different_model(tmp_path):
    train(tiny_config(pattern="A"), _train_config(steps=2), out=tmp_path / "run")
    with pytest.raises(hybridlm.CheckpointError, match="differs"):
        train(tiny_config(pattern="M"), _train_config(steps=4), out=tmp_path / "run", resume=True)


def test_checkpoint_describes_itself(tmp_path):
    train(tiny_config(pattern="A"), _train_config(steps=2), out=tmp_path / "run")
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == [
        "config.json",
        "hybridlm.json",
        "loss.png",
        "metrics.jsonl",
        "model.safetensors",
        "optimizer.json",
        "optimizer.safetensors",
        "recipe.yaml",
        "trainer_state.json",
    ]
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    assert state["train_config"]["task"] == "mqar" and "command" in state


def test_gradient_checkpointing_gives_the_same_gradients():
    config = tiny_config(pattern="M SA R", shared={"n_blocks": 1})
    grads = []
    for checkpointed in (False, True):
        torch.manual_seed(0)
        model = hybridlm.HybridLM(config)
        model.gradient_checkpointing = checkpointed
        model(torch.randint(0, 50, (2, 12))).pow(2).mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)


def test_cli_train_eval_generate_on_text(tmp_path, capsys):
    from hybridlm.cli import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "(RF AF)*1",
            "--size",
            "tiny",
            "--task",
            "text",
            "--data",
            str(corpus),
            "--seq-len",
            "32",
            "--steps",
            "6",
            "--batch-size",
            "4",
            "--tokenizer",
            "bpe:300",
            "--set",
            "vocab_size=304",
            "--out",
            str(out),
            "--log-every",
            "3",
        ]
    )
    assert code == 0 and (out / "tokenizer.json").exists()
    assert main(["eval", str(out), "--batches", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert result["task"] == "text" and result["by_position"][0]["from"] == 1 and result["ppl"] > 1
    assert main(["generate", str(out), "--prompt", "the quick", "--max-new-tokens", "4", "--temperature", "0"]) == 0


def test_cli_train_errors_are_one_line(capsys):
    from hybridlm.cli import main

    assert main(["train", "A", "--task", "mqar", "--task-set", "n_pairs=40", "--steps", "1"]) == 2
    assert "MQAR needs" in capsys.readouterr().err
    assert main(["train", "A", "--task", "sudoku", "--steps", "1"]) == 2
    assert main(["train", "--resume"]) == 2


# the balance loss is a per-micro-batch statistic (as in Switch and Megatron): off, so splits compare exactly
EVERY_FAMILY = ["SM D RF H LF P AE", "--size", "tiny", *("--set", "moe.n_experts=4", "--set", "moe.top_k=2")]
EVERY_FAMILY += ["--set", "moe.aux_loss_coef=0"]


def _launch(out, processes: int, port: int, *extra: str) -> None:
    """`hybridlm train` on every mixer family, in one process or under torchrun (gloo)."""
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", str(port)]
    command = [
        sys.executable,
        *(launcher if processes > 1 else []),
        "-m",
        "hybridlm.cli",
        "train",
        *EVERY_FAMILY,
        *("--task", "mqar", "--task-set", "seq_len=16", "--task-set", "n_pairs=2", "--task-set", "vocab_size=64"),
        *("--set", "vocab_size=64", "--batch-size", "4", "--log-every", "1", "--warmup-steps", "2"),
        *("--out", str(out), *extra),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_one_and_two_processes_train_the_same_recipe(tmp_path):
    """The global batch is split over ranks (and micro-steps): 1 process, DDP and FSDP (with gradient
    accumulation) on every mixer family give the same weights and the same logged losses, and a
    2-process FSDP run resumed in 1 process ends where the uninterrupted run does."""
    _launch(tmp_path / "single", 1, 0, "--steps", "4")
    ddp = _launch(tmp_path / "ddp", 2, 29517, "--steps", "4", "--parallel", "ddp")
    _launch(tmp_path / "fsdp", 2, 29518, "--steps", "4", "--parallel", "fsdp", "--grad-accum", "2")
    _launch(tmp_path / "resumed", 2, 29519, "--steps", "2", "--parallel", "fsdp")
    _launch(tmp_path / "resumed", 1, 0, "--steps", "4", "--resume")
    runs = {name: hybridlm.load(tmp_path / name).state_dict() for name in ("single", "ddp", "fsdp", "resumed")}
    for name, tensor in runs["single"].items():
        for other in ("ddp", "fsdp", "resumed"):
            assert torch.allclose(tensor, runs[other][name], atol=2e-5), (other, name)
    losses = {
        name: [line["loss"] for line in map(json.loads, (tmp_path / name / "metrics.jsonl").read_text().splitlines())]
        for name in ("single", "ddp", "fsdp")
    }
    assert losses["ddp"] == pytest.approx(losses["single"], abs=1e-5)
    assert losses["fsdp"] == pytest.approx(losses["single"], abs=1e-5)
    assert ddp.stdout.count("step 4:") == 1 and ddp.stderr.count("training ") == 1  # rank 0 speaks


def test_a_global_batch_that_does_not_split_is_refused(capsys):
    from hybridlm.cli import main

    assert main(["train", "A", "--size", "tiny", "--batch-size", "6", "--grad-accum", "4", "--steps", "1"]) == 2
    assert "batch_size 6 does not split over 1 rank(s) x 4 micro-step(s)" in capsys.readouterr().err


def test_half_precision_on_cpu_is_refused_with_the_reason(capsys):
    from hybridlm.cli import main

    assert main(["train", "A", "--size", "tiny", "--precision", "bf16", "--steps", "1"]) == 2
    assert "50-500x slower than fp32" in capsys.readouterr().err


def test_gradient_accumulation_equals_one_big_batch():
    config = tiny_config(pattern="M A E", moe={"n_experts": 4, "top_k": 2, "aux_loss_coef": 0.0})
    whole = train(config, _train_config(steps=3, batch_size=8))
    accumulated = train(config, _train_config(steps=3, batch_size=8, grad_accum=4))
    assert [r["loss"] for r in whole.metrics] == pytest.approx([r["loss"] for r in accumulated.metrics], abs=1e-5)


def test_compile_trains_the_same_weights(tmp_path):
    config = tiny_config(pattern="A F")
    plain = train(config, _train_config(steps=2), out=tmp_path / "plain")
    compiled = train(config, _train_config(steps=2, compile=True), out=tmp_path / "compiled")
    assert plain.metrics[-1]["loss"] == pytest.approx(compiled.metrics[-1]["loss"], abs=1e-4)


def test_cli_resume_keeps_the_saved_plan(tmp_path, capsys):
    from hybridlm.cli import main

    out = str(tmp_path / "run")
    assert (
        main(
            [
                "train",
                "A",
                "--size",
                "tiny",
                "--task",
                "copy",
                "--task-set",
                "n_tokens=4",
                "--task-set",
                "seq_len=16",
                "--lr",
                "1e-4",
                "--steps",
                "2",
                "--out",
                out,
            ]
        )
        == 0
    )
    assert main(["train", "transformer", "--size", "tiny", "--out", out, "--resume", "--steps", "3"]) == 2
    assert "model config differs" in capsys.readouterr().err
    assert main(["train", "--out", out, "--resume", "--lr", "3e-3", "--steps", "3"]) == 2
    assert "these differ: lr" in capsys.readouterr().err
    assert main(["train", "A", "--size", "tiny", "--out", out, "--resume", "--steps", "3"]) == 0
    saved = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    assert saved["step"] == 3 and saved["train_config"]["task"] == "copy" and saved["train_config"]["lr"] == 1e-4
