"""Checkpoints: safetensors + config.json round trip, atomic writes, clear refusals."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import hybridlm
from hybridlm import CheckpointError, HybridLM, ModelConfig
from hybridlm.cli import main
from hybridlm.data.tokenizer import HFTokenizer, train_bpe
from hybridlm.ownership import OwnershipError


@pytest.mark.parametrize("name", ["jamba", "zamba2", "griffin", "stripedhyena"])
def test_save_load_round_trip_gives_identical_logits(tmp_path, name):
    model = HybridLM(ModelConfig.from_preset(name, "tiny")).eval()
    hybridlm.save(model, tmp_path / "ckpt")
    loaded = hybridlm.load(tmp_path / "ckpt").eval()
    tokens = torch.randint(0, 258, (2, 12))
    with torch.no_grad():
        assert torch.equal(model(tokens), loaded(tokens))
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == ["config.json", "hybridlm.json", "model.safetensors"]
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["layer_types"] == model.config.layer_types


def test_tied_head_is_stored_once(tmp_path):
    model = HybridLM(ModelConfig.from_preset("mamba", "tiny"))
    hybridlm.save(model, tmp_path / "m")

    assert "lm_head.weight" not in load_file(tmp_path / "m" / "model.safetensors")
    loaded = hybridlm.load(tmp_path / "m")
    assert loaded.lm_head.weight is loaded.embed_tokens.weight


def _hashes(directory) -> dict:
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def test_an_existing_checkpoint_is_replaced_only_when_asked(tmp_path):
    first = HybridLM(ModelConfig.from_preset("transformer", "tiny"))
    hybridlm.save(first, tmp_path / "ckpt", tokenizer=train_bpe(["hello world"] * 10, vocab_size=270))
    before = _hashes(tmp_path / "ckpt")
    second = HybridLM(ModelConfig.from_preset("hawk", "tiny"))
    with pytest.raises(OwnershipError, match="already holds a checkpoint; pass --overwrite"):
        hybridlm.save(second, tmp_path / "ckpt")
    assert _hashes(tmp_path / "ckpt") == before
    hybridlm.save(second, tmp_path / "ckpt", overwrite=True)  # all of it hybridlm's: replaced as one
    assert hybridlm.load(tmp_path / "ckpt").config.pattern == second.config.pattern
    assert not (tmp_path / "ckpt" / "tokenizer.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no staging leftovers


def test_a_user_file_beside_a_checkpoint_blocks_overwrite(tmp_path):
    hybridlm.save(HybridLM(ModelConfig.from_preset("mamba", "tiny")), tmp_path / "ckpt")
    (tmp_path / "ckpt" / "notes.md").write_text("mine")
    before = _hashes(tmp_path / "ckpt")
    with pytest.raises(OwnershipError, match=r"did not write \(notes.md\)"):
        hybridlm.save(HybridLM(ModelConfig.from_preset("hawk", "tiny")), tmp_path / "ckpt", overwrite=True)
    assert _hashes(tmp_path / "ckpt") == before


def test_stale_staging_folders_are_removed_by_the_next_save(tmp_path):
    stale = tmp_path / ".ckpt.staging.abcd1234"
    stale.mkdir()  # what a save killed before its swap leaves: a staging folder with the marker
    (stale / "hybridlm.json").write_text('{"written_by": "hybridlm", "kind": "staging", "owns": []}')
    foreign = tmp_path / ".ckpt.staging.user"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("not ours")
    hybridlm.save(HybridLM(ModelConfig.from_preset("mamba", "tiny")), tmp_path / "ckpt")
    assert not stale.exists() and (foreign / "thesis.tex").exists()


def test_non_finite_weights_are_never_saved_and_never_loaded(tmp_path):
    model = HybridLM(ModelConfig.from_preset("mamba", "tiny"))
    with torch.no_grad():
        model.layers[0].mixer.A_log[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="A_log holds non-finite"):
        hybridlm.save(model, tmp_path / "nan")
    assert not (tmp_path / "nan").exists()
    good = _saved(tmp_path)
    tensors = load_file(good / "model.safetensors")
    name = sorted(tensors)[1]
    tensors[name][0] = float("inf")
    save_file(tensors, good / "model.safetensors")
    with pytest.raises(CheckpointError, match=f"refusing to load: tensor {name} holds non-finite"):
        hybridlm.load(good)


def test_load_takes_a_dtype(tmp_path):
    model = HybridLM(ModelConfig.from_preset("mamba", "tiny")).to(torch.bfloat16)
    hybridlm.save(model, tmp_path / "m")
    assert hybridlm.load(tmp_path / "m").embed_tokens.weight.dtype == torch.float32
    loaded = hybridlm.load(tmp_path / "m", dtype=torch.bfloat16)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_tokenizer_round_trip(tmp_path):
    tokenizer = train_bpe(["the cat sat on the mat"] * 20, vocab_size=280)
    hybridlm.save(HybridLM(ModelConfig.from_preset("mamba", "tiny")), tmp_path / "m", tokenizer=tokenizer)
    loaded = hybridlm.load_tokenizer(tmp_path / "m")
    assert isinstance(loaded, HFTokenizer)
    assert loaded.decode(loaded.encode("the cat")) == "the cat"
    assert isinstance(hybridlm.load_tokenizer(tmp_path), hybridlm.ByteTokenizer)


def test_a_corrupt_tokenizer_file_is_refused_in_one_line(tmp_path, capsys):
    tokenizer = train_bpe(["the cat sat on the mat"] * 20, vocab_size=280)
    hybridlm.save(HybridLM(ModelConfig.from_preset("mamba", "tiny")), tmp_path / "m", tokenizer=tokenizer)
    (tmp_path / "m" / "tokenizer.json").write_text('{"type": "bpe", "merges": 5}')
    with pytest.raises(CheckpointError, match=r"m/tokenizer.json: not a tokenizer file `tokenizers` can read \("):
        hybridlm.load_tokenizer(tmp_path / "m")
    assert main(["eval", str(tmp_path / "m"), "--task", "text", "--seq-len", "16"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("hybridlm eval: error: ") and "tokenizer.json: not a tokenizer file" in line


def _saved(tmp_path):
    hybridlm.save(HybridLM(ModelConfig.from_preset("mamba", "tiny")), tmp_path / "m")
    return tmp_path / "m"


def test_missing_directory_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        hybridlm.load(tmp_path / "nope")


def test_truncated_weights_are_refused(tmp_path):
    path = _saved(tmp_path) / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        hybridlm.load(path.parent)


def test_garbage_weights_are_refused(tmp_path):
    path = _saved(tmp_path) / "model.safetensors"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        hybridlm.load(path.parent)


def test_shape_mismatch_is_refused(tmp_path):
    directory = _saved(tmp_path)
    config = json.loads((directory / "config.json").read_text())
    config["mamba"]["d_state"] = 4
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError, match=r"shape mismatch for layers.0.mixer.A_log: file \(128, 8\), config.json \(128, 4\)"
    ):
        hybridlm.load(directory)


def test_missing_tensors_are_refused(tmp_path):
    directory = _saved(tmp_path)
    config = json.loads((directory / "config.json").read_text())
    config["pattern"], config["layer_types"] = "(M)*4", ["mamba"] * 4
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="missing layers.3"):
        hybridlm.load(directory)


def test_bad_config_is_refused(tmp_path):
    directory = _saved(tmp_path)
    (directory / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        hybridlm.load(directory)
    (directory / "config.json").write_text(json.dumps({"pattern": "AQ"}))
    with pytest.raises(CheckpointError, match="column 2"):
        hybridlm.load(directory)


def test_a_directory_with_other_files_is_never_replaced(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / "config.json").write_text("{}")  # a Hugging Face folder looks like a checkpoint: still not ours
    for overwrite in (False, True):
        with pytest.raises(OwnershipError, match="refusing to replace it"):
            hybridlm.save(HybridLM(ModelConfig.from_preset("mamba", "tiny")), tmp_path, overwrite=overwrite)
    assert (tmp_path / "notes.txt").read_text() == "keep me" and (tmp_path / "config.json").read_text() == "{}"


def test_checkpoint_files_follow_the_umask(tmp_path):
    import os

    previous = os.umask(0o022)
    try:
        hybridlm.save(HybridLM(ModelConfig.from_preset("mamba", "tiny")), tmp_path / "m", tokenizer=_bpe())
    finally:
        os.umask(previous)
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o755
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "m").iterdir()}
    assert modes == dict.fromkeys(["config.json", "hybridlm.json", "model.safetensors", "tokenizer.json"], 0o644)


def _bpe():
    return train_bpe(["the cat sat on the mat"] * 20, vocab_size=280)


def test_strict_json_config(tmp_path):
    hybridlm.save(HybridLM(ModelConfig.from_preset("zamba2", "tiny")), tmp_path / "z")
    text = (tmp_path / "z" / "config.json").read_text()
    json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
    assert hybridlm.load(tmp_path / "z").config.mamba2.dt_limit == (1e-3, float("inf"))
