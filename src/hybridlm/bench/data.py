"""Data loading: tokens/s of reading token shards (memory-mapped) against tokenizing the text again
the way the project did before shards (a Python list of ids -> an int64 tensor), in one process.

Both read the same synthetic UTF-8 corpus written to a temporary folder; the shard time includes
opening the memory map and drawing one training batch, so the pages are really read.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from ..data.shards import read_shards, write_shards
from ..data.text import TextData, read_texts
from ..data.tokenizer import ByteTokenizer
from .timing import Row, best_time


def _write_corpus(folder: Path, megabytes: int) -> None:
    rng = np.random.default_rng(0)
    words = np.array(
        [
            "state",
            "space",
            "models",
            "compress",
            "the",
            "past",
            "into",
            "a",
            "fixed",
            "state;",
            "attention",
            "recalls",
            "it",
        ]
    )
    per_file = 1 << 20
    for index in range(megabytes):
        text = " ".join(rng.choice(words, per_file // 6))
        (folder / f"part{index:03d}.txt").write_text(text[:per_file])


def _old_path(folder: Path, tokenizer) -> torch.Tensor:
    ids: list[int] = []
    for text in read_texts(folder):
        ids.extend(tokenizer.encode(text))
        ids.append(tokenizer.eos_id)
    return torch.tensor(ids, dtype=torch.long)


def data_rows(megabytes: int = 20, repeats: int = 3) -> list[Row]:
    tokenizer = ByteTokenizer()
    with tempfile.TemporaryDirectory() as scratch:
        corpus, shards = Path(scratch) / "corpus", Path(scratch) / "shards"
        corpus.mkdir()
        _write_corpus(corpus, megabytes)
        write_shards(corpus, shards, tokenizer)
        count = int(read_shards(shards, tokenizer)[0].shape[0])

        def from_shards() -> None:
            TextData.from_path(shards, tokenizer).batch(32, 256, 0, 0)

        ours = best_time(from_shards, repeats)
        baseline = best_time(lambda: _old_path(corpus, tokenizer), repeats)
        text = best_time(lambda: TextData.from_path(corpus, tokenizer), repeats)
    return [
        Row("data", f"{megabytes} MB from shards", ours, baseline, "list -> int64 tensor (before)", count),
        Row("data", f"{megabytes} MB from text (bytes, numpy)", text, baseline, "list -> int64 tensor (before)", count),
    ]
