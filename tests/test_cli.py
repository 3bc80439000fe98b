"""The command line: tables, errors with exit code 2, generation from a saved directory."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hybridlm
from hybridlm import HybridLM, ModelConfig
from hybridlm.cli import main
from hybridlm.cli.presets import presets_markdown

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_lists_every_verb(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for verb in ("presets", "inspect", "analyze", "train", "eval", "generate", "convert", "demo"):
        assert verb in out


@pytest.mark.parametrize(
    ("argv", "on_rank_1"),
    [
        (["train", "A", "--steps", "-1"], "[rank 1] hybridlm train: error: steps=-1: must be >= 1\n"),
        (["train", "A", "--stepz", "3"], ""),
        (["train", "A", "--print-config=yes"], ""),
        (["nope"], ""),
    ],
    ids=["setting", "unknown-flag", "usage", "unknown-verb"],
)
def test_under_torchrun_a_usage_error_is_printed_by_rank_0_alone(capsys, monkeypatch, argv, on_rank_1):
    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        try:
            code = main(argv)
        except SystemExit as stop:  # argparse's own usage errors
            code = stop.code
        err = capsys.readouterr().err
        assert code == 2
        assert err == on_rank_1 if rank == "1" else err.count("error: ") == 1 and not err.startswith("[rank")


def test_presets_table(capsys):
    code, out, _ = run(capsys, "presets", "--json")
    rows = {row["preset"]: row for row in json.loads(out)}
    assert code == 0 and set(rows) == set(hybridlm.presets())
    assert rows["jamba"]["attention_ratio"] == 0.125
    assert rows["jamba"]["active_params"] < rows["jamba"]["params"]


def test_inspect_counts_equal_the_model(capsys):
    code, out, _ = run(capsys, "inspect", "zamba2", "--size", "tiny", "--json")
    data = json.loads(out)
    model = HybridLM(ModelConfig.from_preset("zamba2", "tiny"))
    assert code == 0 and data["params"] == model.num_parameters()
    assert data["layer_types"][:3] == ["mamba2", "mamba2", "shared_attention"]


def test_inspect_pattern_uses_small_dimensions(capsys):
    code, out, _ = run(capsys, "inspect", "(RF RF LF)*2", "--json", "--set", "attention.window=9")
    data = json.loads(out)
    assert code == 0 and data["config"]["d_model"] == 384 and data["config"]["attention"]["window"] == 9


def test_inspect_directory_wins(capsys, tmp_path):
    hybridlm.save(HybridLM(ModelConfig.from_preset("hawk", "tiny")), tmp_path / "jamba")
    code, out, _ = run(capsys, "inspect", str(tmp_path / "jamba"), "--json")
    assert code == 0 and json.loads(out)["layer_types"][0] == "rglru"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["inspect", "(MF AX)*2"], "column 6 ('X')"),
        (["inspect", "jambaa"], "did you mean 'jamba'"),
        (["inspect", "jamba", "--set", "mamba.d_sate=3"], "did you mean 'mamba.d_state'"),
        (["inspect", "jamba", "--set", "oops"], "must look like key=value"),
        (["generate", "/nonexistent/dir", "--prompt", "x"], "no such checkpoint directory"),
        (["generate", "/etc/hostname", "--prompt", "x"], "/etc/hostname: is a file, not a checkpoint directory"),
        (["inspect", "(AF)*\u00b2"], "column 5 ('*')"),
        (["inspect", "SM", "--set", "shared.n_kv_heads=5"], "shared.n_kv_heads = 5 must divide"),
    ],
)
def test_user_errors_are_one_line_with_exit_2(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_missing_file_is_named_without_the_errno(capsys, monkeypatch):
    from hybridlm.cli import presets

    def missing(args):
        raise FileNotFoundError(2, "No such file or directory", "/runs/x/config.json")

    monkeypatch.setattr(presets, "run", missing)
    code, _, err = run(capsys, "presets")
    assert (code, err) == (2, "hybridlm presets: error: /runs/x/config.json: No such file or directory\n")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--top-p", "0"], "top_p must be in (0, 1]"),
        (["--top-k", "0"], "top_k must be >= 1"),
        (["--max-new-tokens", "-3"], "max_new_tokens must be >= 0"),
        (["--temperature", "-1"], "temperature must be >= 0"),
    ],
)
def test_generate_refuses_bad_sampling_settings(capsys, tmp_path, flags, message):
    hybridlm.save(HybridLM(ModelConfig.from_preset("mamba", "tiny")), tmp_path / "m")
    code, _, err = run(capsys, "generate", str(tmp_path / "m"), "--prompt", "Hi", *flags)
    assert code == 2 and message in err and err.count("\n") == 1


def test_eval_refuses_tasks_the_model_cannot_read(capsys, tmp_path):
    hybridlm.save(HybridLM(ModelConfig.from_preset("mamba", "tiny")), tmp_path / "m")
    code, _, err = run(capsys, "eval", str(tmp_path / "m"), "--task", "mqar", "--task-set", "vocab_size=1000")
    assert code == 2 and "vocab" in err
    code, _, err = run(capsys, "eval", str(tmp_path / "m"), "--task", "passkey", "--task-set", "seq_len=8")
    assert code == 2 and "passkey needs seq_len" in err


def test_config_json_that_is_not_an_object_is_refused(capsys, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("[1, 2]")
    code, _, err = run(capsys, "inspect", str(tmp_path / "m"))
    assert code == 2 and "expected a JSON object" in err


def test_generate_from_saved_directory(capsys, tmp_path):
    torch.manual_seed(0)
    hybridlm.save(HybridLM(ModelConfig.from_preset("samba", "tiny")), tmp_path / "m")
    code, out, _ = run(
        capsys, "generate", str(tmp_path / "m"), "--prompt", "Hi", "--max-new-tokens", "5", "--temperature", "0"
    )
    assert code == 0 and out.startswith("Hi")
    code, streamed, _ = run(
        capsys,
        "generate",
        str(tmp_path / "m"),
        "--prompt",
        "Hi",
        "--max-new-tokens",
        "5",
        "--temperature",
        "0",
        "--stream",
    )
    assert code == 0 and streamed == out
    greedy = ["--max-new-tokens", "5", "--temperature", "0"]
    longer = run(capsys, "generate", str(tmp_path / "m"), "--prompt", "A longer prompt", *greedy)[1]
    code, batch, _ = run(
        capsys, "generate", str(tmp_path / "m"), "--prompt", "Hi", "--prompt", "A longer prompt", *greedy
    )
    assert code == 0 and batch == out + longer  # a ragged batch: each prompt's own completion, in order
    code, _, err = run(capsys, "generate", str(tmp_path / "m"), "--prompt", "Hi", "--prompt", "B", "--stream")
    assert code == 2 and "--stream prints one completion" in err


def test_console_script_runs():
    result = subprocess.run(
        [sys.executable, "-m", "hybridlm.cli", "presets", "--size", "tiny"], capture_output=True, text=True, check=True
    )
    assert "jamba" in result.stdout


def test_docs_presets_table_is_current():
    assert presets_markdown() in (ROOT / "docs" / "presets.md").read_text()


def test_demo_runs(capsys):
    code, out, _ = run(capsys, "demo", "--steps", "5")
    assert code == 0 and "128.1 GiB" in out  # Llama-2-7B's KV cache at 256K tokens, bf16 (+ slot positions)
    assert "hybrid, SSM first" in out and "max |logits(token by token) - logits(full forward)|" in out


@pytest.mark.slow  # 15 s on 2 cores (torch.compile); `make test-slow`
def test_generate_compiled_gives_the_same_tokens(capsys, tmp_path):
    torch.manual_seed(0)
    hybridlm.save(HybridLM(ModelConfig.from_preset("transformer", "tiny")), tmp_path / "m")
    flags = ["--prompt", "Hi", "--max-new-tokens", "5", "--temperature", "0"]
    outputs = [run(capsys, "generate", str(tmp_path / "m"), *flags, *extra)[1] for extra in ([], ["--compile"])]
    assert outputs[0].startswith("Hi") and outputs[1] == outputs[0]
