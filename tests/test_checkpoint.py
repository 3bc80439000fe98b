"""Checkpoints: safetensors + config.json round trip, atomic writes, clear refusals."""

import json

import pytest
import torch

import hybridlm
from hybridlm import CheckpointError, HybridLM, ModelConfig
from hybridlm.data.tokenizer import HFTokenizer, train_bpe


@pytest.mark.parametrize("name", ["jamba", "zamba2", "griffin", "stripedhyena"])
def test_save_load_round_trip_gives_identical_logits(tmp_path, name):
    model = HybridLM(ModelConfig.from_preset(name, "tiny")).eval()
    hybridlm.save(model, tmp_path / "ckpt")
    loaded = hybridlm.load(tmp_path / "ckpt").eval()
    tokens = torch.randint(0, 258, (2, 12))
    with torch.no_grad():
        assert torch.equal(model(tokens), loaded(tokens))
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["layer_types"] == model.config.layer_types


def test_tied_head_is_stored_once(tmp_path):
    model = HybridLM(ModelConfig.from_preset("mamba", "tiny"))
    hybridlm.save(model, tmp_path / "m")
    from safetensors.torch import load_file

    assert "lm_head.weight" not in load_file(tmp_path / "m" / "model.safetensors")
    loaded = hybridlm.load(tmp_path / "m")
    assert loaded.lm_head.weight is loaded.embed_tokens.weight


def test_overwrite_replaces_whole_directory(tmp_path):
    first = HybridLM(ModelConfig.from_preset("transformer", "tiny"))
    hybridlm.save(first, tmp_path / "ckpt", tokenizer=train_bpe(["hello world"] * 10, vocab_size=270))
    second = HybridLM(ModelConfig.from_preset("hawk", "tiny"))
    hybridlm.save(second, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt" / "tokenizer.json").exists()
    assert hybridlm.load(tmp_path / "ckpt").config.pattern == second.config.pattern
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no staging leftovers


def test_tokenizer_round_trip(tmp_path):
    tokenizer = train_bpe(["the cat sat on the mat"] * 20, vocab_size=280)
    hybridlm.save(HybridLM(ModelConfig.from_preset("mamba", "tiny")), tmp_path / "m", tokenizer=tokenizer)
    loaded = hybridlm.load_tokenizer(tmp_path / "m")
    assert isinstance(loaded, HFTokenizer)
    assert loaded.decode(loaded.encode("the cat")) == "the cat"
    assert isinstance(hybridlm.load_tokenizer(tmp_path), hybridlm.ByteTokenizer)


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
        CheckpointError, match=r"shape mismatch for layers.0.mixer.A_log: file \(128, 8\), config \(128, 4\)"
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
    with pytest.raises(CheckpointError, match="refusing to replace it"):
        hybridlm.save(HybridLM(ModelConfig.from_preset("mamba", "tiny")), tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_checkpoint_files_follow_the_umask(tmp_path):
    import os

    hybridlm.save(HybridLM(ModelConfig.from_preset("mamba", "tiny")), tmp_path / "m")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o777 & ~umask


def test_strict_json_config(tmp_path):
    hybridlm.save(HybridLM(ModelConfig.from_preset("zamba2", "tiny")), tmp_path / "z")
    text = (tmp_path / "z" / "config.json").read_text()
    json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
    assert hybridlm.load(tmp_path / "z").config.mamba2.dt_limit == (1e-3, float("inf"))
