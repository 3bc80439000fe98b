"""Trustworthy runs: nothing a user owns is replaced, a diverging run stops and keeps its last good
checkpoint, every setting is checked before work starts, and the run keeps a record as it goes."""

import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hybridlm
from hybridlm.cli import main
from hybridlm.ownership import OwnershipError
from hybridlm.train import TrainConfig, TrainingDiverged, train

from .helpers import tiny_config

TASK = ["--task", "mqar", "--task-set", "seq_len=16", "--task-set", "n_pairs=2", "--batch-size", "4"]
MODEL = ["A", "--size", "tiny"]


def tree_hashes(directory: Path) -> dict:
    """Every file under `directory` (relative path -> sha256), to prove nothing changed."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def cli(capsys, *argv):
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _recipe(**fields):
    settings = {"seq_len": 16, "n_pairs": 2, "vocab_size": 50}
    base = dict(task="mqar", task_settings=settings, steps=6, batch_size=4, log_every=2)
    return TrainConfig(**{**base, **fields})


# ---- a diverging run -----------------------------------------------------------------------------
def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    recipe = _recipe(lr=1e4, warmup_steps=0, steps=20, save_every=1)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as stopped:
        train(tiny_config(pattern="A"), recipe, out=run)
    step = int(str(stopped.value).split()[1].rstrip(":"))
    saved = json.loads((run / "trainer_state.json").read_text())["step"]
    assert saved == step - 1 >= 1 and "non-finite" in str(stopped.value)
    assert all(torch.isfinite(t).all() for t in hybridlm.load(run).state_dict().values())
    before = tree_hashes(run)
    code, _, err = cli(capsys, "train", "--out", run, "--resume")  # resuming diverges at the same step
    assert code == 3 and f"step {step}: non-finite" in err and err.count("\n") == 1
    assert tree_hashes(run) == before  # the last good checkpoint, bitwise


def test_the_cli_exits_3_naming_the_step(tmp_path, capsys):
    code, _, err = cli(capsys, "train", *MODEL, *TASK, "--lr", "1e4", "--warmup-steps", "0", "--steps", "30")
    assert code == 3 and err.startswith("hybridlm train: stopped: step ") and "non-finite" in err


def test_a_run_that_saved_nothing_is_offered_overwrite_not_resume(tmp_path, capsys):
    run = tmp_path / "run"
    diverging = ("--lr", "1e4", "--warmup-steps", "0", "--steps", "30", "--out", run)
    assert cli(capsys, "train", *MODEL, *TASK, *diverging)[0] == 3
    code, _, err = cli(capsys, "train", *MODEL, *TASK, "--steps", "2", "--out", run)
    assert code == 2 and "holds a run that saved no checkpoint yet, nothing to resume: --overwrite replaces it" in err
    code, _, err = cli(capsys, "train", "--out", run, "--resume")
    assert code == 2 and "give a model (preset, pattern or directory) without --resume" in err


# ---- nothing a user owns is replaced ---------------------------------------------------------------
def test_train_into_an_existing_run_needs_resume_or_overwrite(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(capsys, "train", *MODEL, *TASK, "--steps", "2", "--out", run)[0] == 0
    before = tree_hashes(run)
    code, _, err = cli(capsys, "train", *MODEL, *TASK, "--steps", "2", "--out", run)
    assert code == 2 and "holds a training run saved at step 2: --resume continues it" in err
    assert tree_hashes(run) == before
    assert cli(capsys, "train", *MODEL, *TASK, "--steps", "3", "--out", run, "--resume", "auto")[0] == 0
    assert json.loads((run / "trainer_state.json").read_text())["step"] == 3
    assert cli(capsys, "train", "R", "--size", "tiny", *TASK, "--steps", "2", "--out", run, "--overwrite")[0] == 0
    assert hybridlm.load(run).config.pattern == "R" and not (run / "checkpoints").exists()
    fresh = tmp_path / "fresh"
    assert cli(capsys, "train", *MODEL, *TASK, "--steps", "2", "--out", fresh, "--resume", "auto")[0] == 0
    code, _, err = cli(capsys, "train", *MODEL, *TASK, "--steps", "2", "--out", tmp_path / "none", "--resume")
    assert code == 2 and "holds no saved run" in err and not (tmp_path / "none").exists()


def _hf_folder(path: Path) -> Path:
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    (path / "pytorch_model.bin").write_bytes(b"weights")
    (path / "README.md").write_text("model card")
    return path


@pytest.mark.parametrize("flags", [[], ["--overwrite"], ["--resume", "auto"]])
def test_a_folder_hybridlm_did_not_write_is_never_touched(tmp_path, capsys, flags):
    folder = _hf_folder(tmp_path / "hf")
    before = tree_hashes(folder)
    code, _, err = cli(capsys, "train", *MODEL, *TASK, "--steps", "2", "--out", folder, *flags)
    assert code == 2 and "holds files hybridlm did not write (README.md, config.json, pytorch_model.bin)" in err
    assert tree_hashes(folder) == before


def test_a_user_file_inside_a_run_blocks_every_write(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(capsys, "train", *MODEL, *TASK, "--steps", "2", "--out", run)[0] == 0
    (run / "notes.txt").write_text("my notes")
    before = tree_hashes(run)
    for flags in (["--overwrite"], ["--resume"]):
        code, _, err = cli(capsys, "train", *MODEL, *TASK, "--steps", "3", "--out", run, *flags)
        assert code == 2 and "did not write (notes.txt)" in err
    assert tree_hashes(run) == before


def test_convert_refuses_its_source_a_folder_inside_it_and_foreign_folders(tmp_path, capsys):
    source = tmp_path / "ours"
    hybridlm.save(hybridlm.HybridLM(hybridlm.ModelConfig.from_preset("mamba", "tiny")), source)
    folder = _hf_folder(tmp_path / "hf")
    before, before_folder = tree_hashes(source), tree_hashes(folder)
    for destination, message in [
        (source, "is, holds or lies inside the source"),
        (source / "sub", "is, holds or lies inside the source"),
        (tmp_path, "is, holds or lies inside the source"),
        (folder, "holds files hybridlm did not write"),
    ]:
        code, _, err = cli(capsys, "convert", source, destination, "--to-hf")
        assert code == 2 and message in err, err
    assert tree_hashes(source) == before and tree_hashes(folder) == before_folder
    assert cli(capsys, "convert", source, tmp_path / "export", "--to-hf")[0] == 0
    code, _, err = cli(capsys, "convert", source, tmp_path / "export", "--to-hf")
    assert code == 2 and "pass --overwrite" in err
    assert cli(capsys, "convert", source, tmp_path / "export", "--to-hf", "--overwrite")[0] == 0
    assert json.loads((tmp_path / "export" / "hybridlm.json").read_text())["kind"] == "hf-export"


def test_an_output_below_a_file_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, _, err = cli(capsys, "train", *MODEL, *TASK, "--steps", "100000", "--out", tmp_path / "file" / "sub")
    assert code == 2 and "is a file, so nothing can be written below it" in err  # instantly, not after 1e5 steps


def test_sweep_refuses_an_output_folder_it_did_not_write(tmp_path, capsys):
    spec = tmp_path / "sweep.json"
    spec.write_text(
        json.dumps({"base": {"d_model": 32, "n_heads": 2}, "train": {"steps": 1}, "grid": {"train.seed": [0]}})
    )
    folder = _hf_folder(tmp_path / "hf")
    before = tree_hashes(folder)
    code, _, err = cli(capsys, "sweep", spec, "--out", folder)
    assert code == 2 and "did not write" in err and tree_hashes(folder) == before


def test_a_run_and_a_sweep_never_replace_each_other(tmp_path, capsys):
    spec = tmp_path / "sweep.json"
    spec.write_text(
        json.dumps({"base": {"d_model": 32, "n_heads": 2}, "train": {"steps": 1}, "grid": {"train.seed": [0]}})
    )
    sweep = tmp_path / "sweep"
    assert cli(capsys, "sweep", spec, "--out", sweep)[0] == 0
    before = tree_hashes(sweep)
    for flags in ([], ["--overwrite"], ["--resume", "auto"]):  # `auto` deleted a sweep's results.json and study
        code, _, err = cli(capsys, "train", *MODEL, *TASK, "--steps", "2", "--out", sweep, *flags)
        assert code == 2 and f"{sweep} holds a sweep's results, which train does not replace" in err, err
    assert tree_hashes(sweep) == before
    run = tmp_path / "run"
    assert cli(capsys, "train", *MODEL, *TASK, "--steps", "2", "--out", run)[0] == 0
    before = tree_hashes(run)
    code, _, err = cli(capsys, "sweep", spec, "--out", run)
    assert code == 2 and f"{run} holds a training run, which a sweep does not replace: choose another --out" in err
    with pytest.raises(OwnershipError, match="holds a training run, which a checkpoint save does not"):
        hybridlm.save(hybridlm.load(run), run, overwrite=True)
    assert tree_hashes(run) == before


def test_stale_staging_folders_are_removed_on_resume(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(pattern="A"), _recipe(steps=2), out=run)
    stale = tmp_path / ".run.staging.killed"  # what a kill during a save leaves beside the run
    stale.mkdir()
    (stale / "hybridlm.json").write_text('{"written_by": "hybridlm", "kind": "staging", "owns": []}')
    train(tiny_config(pattern="A"), _recipe(steps=3), out=run, resume=True)
    assert not stale.exists()


# ---- no pickle is ever read -------------------------------------------------------------------------
class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickled_payload_is_refused_in_one_line_and_never_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(capsys, "train", *MODEL, *TASK, "--steps", "2", "--out", run)[0] == 0
    marker = tmp_path / "PWNED"
    payload = pickle.dumps(_Payload(marker))
    (run / "optimizer.safetensors").write_bytes(payload)
    code, _, err = cli(capsys, "train", "--out", run, "--resume", "--steps", "3")
    assert code == 2 and "corrupt optimizer state" in err and err.count("\n") == 1
    (run / "model.safetensors").write_bytes(payload)
    code, _, err = cli(capsys, "eval", run)
    assert code == 2 and "corrupt or truncated safetensors" in err and err.count("\n") == 1
    assert not marker.exists()


# ---- files and records -------------------------------------------------------------------------------
def test_every_file_of_a_run_follows_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        train(tiny_config(pattern="A"), _recipe(steps=4, save_every=2, keep=2), out=tmp_path / "run")
    finally:
        os.umask(previous)
    modes = {name: (tmp_path / "run" / name).stat().st_mode & 0o777 for name in tree_hashes(tmp_path / "run")}
    assert "checkpoints/step-000002/model.safetensors" in modes and "loss.png" in modes
    assert set(modes.values()) == {0o644}, modes


def test_metrics_jsonl_has_one_line_per_logged_step_even_across_a_resume(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(pattern="A"), _recipe(steps=7, log_every=2), out=run, stop_at=3)  # killed after step 3
    train(tiny_config(pattern="A"), _recipe(steps=7, log_every=2), out=run, resume=True)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4, 6, 7]
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "tflops"} <= set(lines[0]) and "eval_loss" in lines[-1]


def test_keep_retains_the_last_checkpoints(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(pattern="A"), _recipe(steps=8, save_every=2, keep=3), out=run)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000004", "step-000006"]
    older = hybridlm.load(run / "checkpoints" / "step-000006")
    assert json.loads((run / "checkpoints" / "step-000006" / "trainer_state.json").read_text())["step"] == 6
    assert not torch.equal(older.embed_tokens.weight, hybridlm.load(run).embed_tokens.weight)


def test_print_config_loads_back_to_the_identical_run(tmp_path, capsys):
    flags = [*MODEL, "--set", "attention.short_conv=3", *TASK, "--steps", "3", "--lr", "0.01"]
    code, recipe, _ = cli(capsys, "train", *flags, "--print-config")
    assert code == 0 and "short_conv: 3" in recipe
    (tmp_path / "recipe.yaml").write_text(recipe)
    assert cli(capsys, "train", *flags, "--out", tmp_path / "a")[0] == 0
    assert cli(capsys, "train", "--config", tmp_path / "recipe.yaml", "--out", tmp_path / "b")[0] == 0
    first, second = hybridlm.load(tmp_path / "a"), hybridlm.load(tmp_path / "b")
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert (tmp_path / "a" / "recipe.yaml").read_text() == recipe  # the run wrote its resolved recipe at start


# ---- a fine-tune: a checkpoint directory as the model -----------------------------------------------
def _max_difference(first, second) -> float:
    return max((a - b).abs().max().item() for a, b in zip(first.state_dict().values(), second.state_dict().values()))


def test_a_checkpoint_directory_as_the_model_starts_from_its_weights(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text("the cat sat on the mat, and the dog sat on the log. " * 200)
    text = ["--task", "text", "--data", tmp_path / "corpus.txt", "--seq-len", "16", "--batch-size", "4"]
    text += ["--eval-batches", "1"]
    assert (
        cli(capsys, "train", *MODEL, *text, "--steps", "3", "--tokenizer", "bpe:300", "--out", tmp_path / "base")[0]
        == 0
    )
    base = hybridlm.load(tmp_path / "base")
    nearly_still = [*text, "--steps", "1", "--lr", "1e-12", "--weight-decay", "0"]
    assert cli(capsys, "train", tmp_path / "base", *nearly_still, "--out", tmp_path / "tuned")[0] == 0
    assert _max_difference(hybridlm.load(tmp_path / "tuned"), base) < 1e-6  # it used to start from random weights
    tuned_tokenizer = (tmp_path / "tuned" / "tokenizer.json").read_text()
    assert tuned_tokenizer == (tmp_path / "base" / "tokenizer.json").read_text()  # the checkpoint's BPE
    recipe = (tmp_path / "tuned" / "recipe.yaml").read_text()
    assert f"init_from: {tmp_path / 'base'}" in recipe
    assert cli(capsys, "train", "--config", tmp_path / "tuned" / "recipe.yaml", "--out", tmp_path / "again")[0] == 0
    assert _max_difference(hybridlm.load(tmp_path / "again"), base) < 1e-6  # the recipe repeats the fine-tune
    by_flag = [*MODEL, "--init-from", tmp_path / "base", *nearly_still, "--out", tmp_path / "by-flag"]
    assert cli(capsys, "train", *by_flag)[0] == 0  # the preset's vocabulary sized to the checkpoint's BPE
    assert _max_difference(hybridlm.load(tmp_path / "by-flag"), base) < 1e-6
    torch.manual_seed(0)  # what the fine-tune used to start from: the seed's initialisation
    assert _max_difference(hybridlm.HybridLM(base.config), base) > 1e-3


def test_a_fine_tune_resumes_from_its_own_run_and_a_directory_model_keeps_resume_auto(tmp_path, capsys):
    base, tuned = tmp_path / "base", tmp_path / "tuned"
    assert cli(capsys, "train", *MODEL, *TASK, "--steps", "2", "--out", base)[0] == 0
    assert cli(capsys, "train", base, *TASK, "--steps", "2", "--out", tuned)[0] == 0
    base.rename(tmp_path / "moved")  # a resumed fine-tune needs its own run only
    assert cli(capsys, "train", "--out", tuned, "--resume", "--steps", "3")[0] == 0
    assert json.loads((tuned / "trainer_state.json").read_text())["step"] == 3
    for again in (["--resume", "auto"], ["--resume"]):  # the run named as the model of its own resume, as before
        assert cli(capsys, "train", tuned, *TASK, "--steps", "4", "--out", tuned, *again)[0] == 0
    recipe = tmp_path / "recipe.yaml"  # written by --print-config, it holds `init_from: null`
    recipe.write_text(cli(capsys, "train", *MODEL, *TASK, "--steps", "1", "--lr", "1e-12", "--print-config")[1])
    assert "init_from: null" in recipe.read_text()
    assert (
        cli(capsys, "train", tmp_path / "moved", "--config", recipe, "--weight-decay", "0", "--out", tmp_path / "c")[0]
        == 0
    )
    assert _max_difference(hybridlm.load(tmp_path / "c"), hybridlm.load(tmp_path / "moved")) < 1e-6


def test_a_sweep_refuses_init_from(tmp_path, capsys):
    spec = tmp_path / "sweep.json"
    spec.write_text(json.dumps({"train": {"steps": 1, "init_from": str(tmp_path)}, "grid": {"train.seed": [0]}}))
    code, _, err = cli(capsys, "sweep", spec, "--list")
    assert code == 2 and "train.init_from: a sweep trains each point from its own initialisation" in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["{base}", "--out", "{base}", "--overwrite"],
            "the checkpoint {base} is also --out: the run would replace the weights",
        ),
        (
            ["mamba", "--size", "tiny", "--init-from", "{base}", "--out", "{out}"],
            "weights do not match the model to train",
        ),
        (["{base}", "--tokenizer", "bpe:300", "--out", "{out}"], "a fine-tune of {base} keeps its tokenizer"),
        (["A", "--size", "tiny", "--init-from", "{out}", "--out", "{out}2"], "--init-from {out}: no checkpoint there"),
    ],
)
def test_a_fine_tune_is_checked_before_any_work(tmp_path, capsys, flags, message):
    base = tmp_path / "base"
    assert cli(capsys, "train", *MODEL, *TASK, "--steps", "1", "--out", base)[0] == 0
    before = tree_hashes(base)
    values = {"base": base, "out": tmp_path / "out"}
    code, _, err = cli(capsys, "train", *[f.format(**values) for f in flags], *TASK, "--steps", "1")
    assert code == 2 and message.format(**values) in err, err
    assert tree_hashes(base) == before and not (tmp_path / "out").exists()


def test_tensorboard_sink_writes_events(tmp_path):
    train(tiny_config(pattern="A"), _recipe(steps=2, tensorboard=True), out=tmp_path / "run")
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_a_closed_stdout_ends_quietly():
    command = f"{Path(sys.executable).parent / 'hybridlm'} inspect jamba --json | head -c 100"
    result = subprocess.run(command, shell=True, capture_output=True, text=True)
    assert len(result.stdout) == 100 and result.stderr == ""


# ---- every setting is checked before work starts -------------------------------------------------------
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--batch-size", "0"], "batch_size=0: must be >= 1"),
        (["--steps", "-1"], "steps=-1: must be >= 1"),
        (["--lr", "-1"], "lr=-1.0: must be > 0.0"),
        (["--lr", "nan"], "lr=nan: must be a finite number"),
        (["--lr", "1e39"], "lr=1e+39: must be > 0.0 and <= 1e+30"),  # AdamW's float32 update overflowed: a traceback
        (["--steps", "5", "--warmup-steps", "9"], "warmup_steps=9 exceeds steps=5"),
        (["--min-lr-ratio", "2"], "min_lr_ratio=2.0: must be in [0.0, 1.0]"),
        (["--eval-batches", "0"], "eval_batches=0: must be >= 1"),
        (["--save-every", "-2"], "save_every=-2: must be >= 0"),
        (["--steps", "x"], "steps must be an integer, got 'x'"),
        (["--stepz", "3"], "unknown argument --stepz: did you mean '--steps'?"),
        (["--task", "sudoku"], "task='sudoku': choose one of mqar"),
        (["--size", "paper"], "--size paper is the published shape"),
        (["--resume", "sometimes", "--out", "x"], "--resume 'sometimes': give no value (continue) or auto"),
    ],
)
def test_bad_training_settings_are_one_line_errors(capsys, flags, message):
    code, _, err = cli(capsys, "train", "A", *flags)
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "train_block, message",
    [
        ({"stepz": 3}, "unknown setting 'train.stepz'; did you mean 'train.steps'?"),
        ({"steps": "3"}, "train.steps must be an integer, got '3'"),
        ({"lr": True}, "train.lr must be a number, got True"),
    ],
)
def test_a_recipe_file_is_checked_like_flags(tmp_path, capsys, train_block, message):
    (tmp_path / "recipe.json").write_text(json.dumps({"model": "A", "size": "tiny", "train": train_block}))
    code, _, err = cli(capsys, "train", "--config", tmp_path / "recipe.json")
    assert code == 2 and message in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "change, message",
    [
        ({"train": {"steps": "3"}}, "train.steps must be an integer, got '3'"),
        ({"train": {"stepz": 3}}, "did you mean 'train.steps'?"),
        ({"grid": {"train.stepz": [1, 2]}}, "did you mean 'train.steps'?"),
        ({"grid": {"train.lrr": [0.1]}}, "did you mean 'train.lr'?"),
        ({"grid": {"mamba.d_stat": [4]}}, "did you mean 'mamba.d_state'?"),
    ],
)
def test_sweep_list_resolves_and_checks_every_point(tmp_path, capsys, change, message):
    spec = {"base": {"d_model": 32, "n_heads": 2}, "train": {"steps": 3}, "grid": {"train.seed": [0, 1]}}
    for key, value in change.items():
        spec[key] = {**spec[key], **value}
    (tmp_path / "sweep.json").write_text(json.dumps(spec))
    code, _, err = cli(capsys, "sweep", tmp_path / "sweep.json", "--list")
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_a_sweep_retrains_a_point_whose_recipe_changed(tmp_path, capsys):
    spec = {"base": {"d_model": 32, "n_heads": 2, "vocab_size": 64}, "grid": {"pattern": ["A"]}}
    spec["train"] = {"task_settings": {"seq_len": 16, "n_pairs": 2, "vocab_size": 64}, "steps": 2, "batch_size": 4}
    (tmp_path / "sweep.json").write_text(json.dumps(spec))
    assert cli(capsys, "sweep", tmp_path / "sweep.json", "--out", tmp_path / "out")[0] == 0
    assert cli(capsys, "sweep", tmp_path / "sweep.json", "--out", tmp_path / "out", "--steps", "3")[0] == 0
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [row["tokens"] for row in rows] == [2 * 4 * 16, 3 * 4 * 16]  # the 3-step recipe was trained, not reused


def test_bad_task_settings_fail_before_the_run_directory_is_made(tmp_path, capsys):
    code, _, err = cli(capsys, "train", *MODEL, "--task", "mqar", "--task-set", "n_pairs=400", "--out", tmp_path / "r")
    assert code == 2 and "MQAR needs" in err and not (tmp_path / "r").exists()
