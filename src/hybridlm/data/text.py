"""Language-model data from text: local files, token shards (`hybridlm tokenize`) or the embedded
default corpus, held as a compact uint16/uint32 token array (memory-mapped for shards), with
batches drawn as pure functions of (seed, index) so training resumes exactly.

A text file or folder, and a shard folder, hold out their last `val_fraction` of tokens; the
default corpus holds out whole files (chosen by a hash of their path). Documents are separated by
the tokenizer's end-of-text token.

Glossary: B batch, L sequence length, T tokens.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import ConfigError
from .synthetic import Batch, batch_generator
from .tokenizer import ByteTokenizer

DEFAULT_CORPUS = "stdlib"  # `--data` left out: the running interpreter's standard-library sources
VALIDATION_EVERY = 20  # the default corpus: one file in 20 (by path hash) is held out


def read_texts(path) -> list[str]:
    """A file, or every *.txt / *.md file under a directory, sorted by name."""
    return [file.read_text(encoding="utf-8", errors="replace") for file in text_files(path)]


def text_files(path) -> list[Path]:
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".md") and p.is_file())
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"{path}: no such text file, directory or token shards")
    if not files:
        raise FileNotFoundError(f"{path}: no .txt or .md files")
    return files


def default_corpus_files() -> list[Path]:
    """The standard library's own Python sources (no tests, no site-packages), sorted: text every
    Python installation carries, so `--task text` trains with no download."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(
        p
        for p in root.rglob("*.py")
        if "site-packages" not in p.parts and not any(part.startswith("test") for part in p.relative_to(root).parts)
    )


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


def encode_files(files, tokenizer) -> tuple[np.ndarray, int]:
    """All files' tokens, consecutive documents separated by end-of-text, and their total UTF-8 bytes
    (so one file under the byte tokenizer gives exactly its bytes as tokens)."""
    return encode_texts((Path(file).read_bytes() for file in files), tokenizer)


def encode_texts(documents, tokenizer) -> tuple[np.ndarray, int]:
    """`encode_files` for documents given as UTF-8 bytes or strings."""
    dtype = token_dtype(tokenizer.vocab_size)
    pieces, n_bytes = [], 0
    for document in documents:
        raw = document.encode("utf-8") if isinstance(document, str) else document
        n_bytes += len(raw)
        if pieces and tokenizer.eos_id is not None:
            pieces.append(np.asarray([tokenizer.eos_id], dtype=dtype))
        if isinstance(tokenizer, ByteTokenizer):  # the bytes are the tokens: no Python list in between
            ids = np.frombuffer(raw, dtype=np.uint8)
        else:
            ids = tokenizer.encode(raw.decode("utf-8", errors="replace"))
        pieces.append(np.asarray(ids, dtype=dtype))
    return (np.concatenate(pieces) if pieces else np.zeros(0, dtype)), n_bytes


def token_stream(path, tokenizer) -> tuple[np.ndarray, int]:
    """The whole stream of token shards, a `datasets` source (hf:NAME[:SPLIT]) or a text file or
    folder, and its source bytes."""
    from .hf_datasets import HF_PREFIX, dataset_texts
    from .shards import is_shard_dir, read_shards

    if str(path).startswith(HF_PREFIX):
        return encode_texts(dataset_texts(str(path)), tokenizer)
    if is_shard_dir(path):
        return read_shards(path, tokenizer)
    return encode_files(text_files(path), tokenizer)


@dataclass
class TextData:
    """A token stream in two parts: `train` and `validation` (uint16/uint32 arrays, or memmaps)."""

    train: np.ndarray
    validation: np.ndarray
    n_bytes: int = 0  # UTF-8 bytes of the text behind both parts (for bits per byte)

    @classmethod
    def from_path(cls, path, tokenizer, val_fraction: float = 0.05) -> TextData:
        """Shards written by `hybridlm tokenize`, hf:NAME[:SPLIT], a text file or folder, or (path None)
        the default corpus."""
        if path is None or path == DEFAULT_CORPUS:
            return cls.default_corpus(tokenizer)
        tokens, n_bytes = token_stream(path, tokenizer)
        cut = int(len(tokens) * (1 - val_fraction))
        return cls(tokens[:cut], tokens[cut:], n_bytes)

    @classmethod
    def default_corpus(cls, tokenizer) -> TextData:
        files = default_corpus_files()
        held_out = [f for f in files if _path_hash(f) % VALIDATION_EVERY == 0]
        train, train_bytes = encode_files([f for f in files if f not in held_out], tokenizer)
        validation, validation_bytes = encode_files(held_out, tokenizer)
        return cls(train, validation, train_bytes + validation_bytes)

    def split_tokens(self, split: str) -> np.ndarray:
        return self.train if split == "train" else self.validation

    def batch(self, batch_size: int, seq_len: int, seed: int, index: int, split: str = "train") -> Batch:
        """Random windows of seq_len + 1 tokens: inputs are the first L, targets the next-token shift."""
        tokens = self.split_tokens(split)
        if len(tokens) < seq_len + 2:
            raise ConfigError(f"the {split} split has {len(tokens)} tokens, fewer than seq_len + 2 = {seq_len + 2}")
        starts = torch.randint(
            0, len(tokens) - seq_len - 1, (batch_size,), generator=batch_generator(seed, index, split)
        ).numpy()
        windows = torch.from_numpy(tokens[starts[:, None] + np.arange(seq_len + 1)].astype(np.int64))  # (B, L + 1)
        return Batch(windows[:, :-1], windows[:, 1:])

    def sequential_batches(self, batch_size: int, seq_len: int, split: str = "test"):
        """Non-overlapping windows covering the split once (for evaluation)."""
        tokens = self.split_tokens(split)
        n_windows = (len(tokens) - 1) // seq_len
        for first in range(0, n_windows, batch_size):
            starts = np.arange(first, min(first + batch_size, n_windows)) * seq_len
            chunk = torch.from_numpy(tokens[starts[:, None] + np.arange(seq_len + 1)].astype(np.int64))
            yield Batch(chunk[:, :-1], chunk[:, 1:])


def _path_hash(path: Path) -> int:
    relative = path.relative_to(Path(sysconfig.get_paths()["stdlib"])).as_posix()
    return int.from_bytes(hashlib.sha256(relative.encode()).digest()[:4], "little")
