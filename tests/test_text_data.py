"""Text data: token shards round-trip and resume exactly, the default corpus, BPE sizes the model,
and whole-stream evaluation scores every token once."""

import json

import numpy as np
import pytest
import torch

import hybridlm
from hybridlm.cli import main
from hybridlm.config import ConfigError
from hybridlm.data.shards import read_shards, write_shards
from hybridlm.data.text import TextData, default_corpus_files, encode_files, text_files
from hybridlm.data.tokenizer import ByteTokenizer, train_bpe
from hybridlm.evaluate_text import score_tokens, text_report
from hybridlm.train import TrainConfig, train

from .helpers import tiny_config


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "while", "dogs", "ran", "far", "under", "blue", "skies", "é"]
    for index in range(3):
        (folder / f"doc{index}.txt").write_text(" ".join(rng.choice(words, 3000)))
    return folder


@pytest.mark.parametrize("bpe", [False, True])
def test_shards_hold_the_tokens_of_direct_tokenization(tmp_path, corpus, bpe):
    tokenizer = train_bpe([p.read_text() for p in text_files(corpus)], 300) if bpe else ByteTokenizer()
    index = write_shards(corpus, tmp_path / "shards", tokenizer, shard_tokens=4000)
    direct, n_bytes = encode_files(text_files(corpus), tokenizer)
    stored, stored_bytes = read_shards(tmp_path / "shards", tokenizer)
    assert np.array_equal(np.asarray(stored), direct) and stored_bytes == n_bytes == index["bytes"]
    assert index["dtype"] == "uint16" and len(index["shards"]) > 1 and index["tokens"] == len(direct)
    assert sum(source["bytes"] for source in index["sources"]) == n_bytes


def test_shards_are_refused_by_another_tokenizer(tmp_path, corpus):
    write_shards(corpus, tmp_path / "shards", ByteTokenizer())
    with pytest.raises(ConfigError, match="tokenized with the byte tokenizer, the model's is the bpe "):
        read_shards(tmp_path / "shards", train_bpe([p.read_text() for p in text_files(corpus)], 300))
    with pytest.raises(ConfigError, match="shards go to a new folder"):
        write_shards(corpus, tmp_path / "shards", ByteTokenizer())


def test_training_from_shards_resumes_exactly(tmp_path, corpus):
    write_shards(corpus, tmp_path / "shards", ByteTokenizer())
    recipe = TrainConfig(task="text", text_path=str(tmp_path / "shards"), seq_len=16, steps=4, batch_size=4)
    config = tiny_config(pattern="A R", vocab_size=258)
    train(config, recipe, out=tmp_path / "straight")
    train(config, recipe, out=tmp_path / "resumed", stop_at=2)
    train(config, recipe, out=tmp_path / "resumed", resume=True)
    a, b = hybridlm.load(tmp_path / "straight"), hybridlm.load(tmp_path / "resumed")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    text = TextData.from_path(corpus, ByteTokenizer())
    shards = TextData.from_path(tmp_path / "shards", ByteTokenizer())
    assert torch.equal(text.batch(4, 16, 0, 3).inputs, shards.batch(4, 16, 0, 3).inputs)


def test_the_default_corpus_is_split_by_file_and_trains(tmp_path, capsys):
    files = default_corpus_files()
    assert len(files) > 100 and all(f.suffix == ".py" for f in files)
    data = TextData.default_corpus(ByteTokenizer())
    again = TextData.default_corpus(ByteTokenizer())
    assert 0 < len(data.validation) < len(data.train) / 5 and np.array_equal(data.validation, again.validation)
    assert main(["train", "A", "--size", "tiny", "--task", "text", "--seq-len", "16", "--steps", "1"]) == 0


def test_bpe_sets_the_model_vocabulary(tmp_path, corpus, capsys):
    argv = ["train", "A", "--size", "tiny", "--task", "text", "--data", str(corpus), "--tokenizer", "bpe:300"]
    assert main([*argv, "--seq-len", "16", "--steps", "1", "--out", str(tmp_path / "run")]) == 0
    assert hybridlm.load(tmp_path / "run").config.vocab_size == 300


def test_a_relative_data_path_resumes_and_evaluates_from_another_folder(tmp_path, corpus, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["train", "A", "--size", "tiny", "--task", "text", "--data", "corpus", "--seq-len", "16", "--out", "run"]
    assert main([*argv, "--steps", "1"]) == 0
    monkeypatch.chdir(corpus)  # "corpus" means nothing here
    assert main(["train", "--out", str(tmp_path / "run"), "--resume", "--steps", "2"]) == 0
    assert main(["eval", str(tmp_path / "run"), "--seq-len", "16"]) == 0


def test_a_missing_source_leaves_no_shard_folder(tmp_path, capsys):
    assert main(["tokenize", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "shards")]) == 2
    assert "no such text file" in capsys.readouterr().err and not (tmp_path / "shards").exists()


def test_context_points_a_text_run_to_eval(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    assert main(["train", "A", "--size", "tiny", "--task", "text", "--data", str(corpus), "--seq-len", "16",
                 "--steps", "1", "--out", str(run)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["context", str(run)]) == 2
    assert f"`hybridlm eval {run}` gives its perplexity by position" in capsys.readouterr().err


def test_whole_stream_scoring_counts_every_token_once(tmp_path):
    model = hybridlm.HybridLM(tiny_config(pattern="A R")).eval()
    tokens = np.random.default_rng(1).integers(0, 50, 333).astype(np.uint16)
    with torch.no_grad():
        full = torch.from_numpy(tokens.astype(np.int64))[None]
        direct = torch.nn.functional.cross_entropy(model(full[:, :-1])[0], full[0, 1:], reduction="none")
    whole, _ = score_tokens(model, tokens, seq_len=400)
    assert np.allclose(whole, direct.double().numpy(), atol=1e-5)
    for stride in (64, 17, 1):
        losses, positions = score_tokens(model, tokens, seq_len=64, stride=stride, batch_size=5)
        assert len(losses) == 332 and (losses > 0).all() and positions.max() == 63
        if stride == 64:
            starts = np.arange(0, 332, 64)
            assert np.array_equal(positions[starts[:-1]], np.zeros(len(starts) - 1))
    report = text_report(losses, positions, n_bytes=1000, seq_len=64, stride=1)
    assert report["bits_per_byte"] == pytest.approx(losses.sum() / (1000 * np.log(2)))
    assert sum(bucket["tokens"] for bucket in report["by_position"]) == 332
    assert all(b["ppl_low"] <= b["ppl"] <= (b["ppl_high"] or np.inf) for b in report["by_position"])


def test_eval_scores_a_whole_held_out_file(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    train(
        tiny_config(pattern="A R", vocab_size=258),
        TrainConfig(task="text", text_path=str(corpus), seq_len=16, steps=2, batch_size=4),
        out=run,
    )
    held_out = tmp_path / "play.txt"
    held_out.write_text("ACT I. Scene 1. Enter two gentlemen — ça va?\n" * 40)
    n_bytes = len(held_out.read_bytes())
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(held_out), "--seq-len", "32", "--stride", "24", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tokens"] == n_bytes - 1  # byte tokens; the first byte has no prediction
    assert result["bits_per_byte"] == pytest.approx(result["loss"] * result["tokens"] / (n_bytes * np.log(2)))
    assert sum(bucket["tokens"] for bucket in result["by_position"]) == result["tokens"]
    assert main(["eval", str(run), "--seq-len", "16"]) == 0  # no --data: the run's validation split
    assert "the validation split of" in capsys.readouterr().out


def test_a_datasets_source_trains_and_evaluates(tmp_path, capsys):
    import datasets

    texts = ["first document about cats. " * 30, "second document, about dogs. " * 30]
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(tmp_path / "local"))
    source = f"hf:{tmp_path / 'local'}"
    argv = ["train", "A", "--size", "tiny", "--task", "text", "--data", source, "--seq-len", "16", "--steps", "1"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--data", f"{source}:train", "--seq-len", "16", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    n_bytes = sum(len(text.encode()) for text in texts)
    assert result["bytes"] == n_bytes and result["tokens"] == n_bytes + 1 - 1  # one end-of-text between the two
    code = main(["eval", str(tmp_path / "run"), "--data", f"{source}:validation"])
    assert code == 2 and "cannot load" in capsys.readouterr().err
