"""Language-model data from local text files: tokenized once, batches drawn as pure functions of
(seed, index) so training resumes exactly. The last `val_fraction` of the tokens is held out.

Glossary: B batch, L sequence length.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ConfigError
from .synthetic import Batch, batch_generator


def read_texts(path) -> list[str]:
    """A file, or every *.txt / *.md file under a directory, sorted by name."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".md") and p.is_file())
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"{path}: no such text file or directory")
    if not files:
        raise FileNotFoundError(f"{path}: no .txt or .md files")
    return [file.read_text(encoding="utf-8", errors="replace") for file in files]


@dataclass
class TextData:
    """Token stream split into train and validation parts."""

    tokens: torch.Tensor  # (T,) all token ids
    val_fraction: float = 0.05

    @classmethod
    def from_path(cls, path, tokenizer, val_fraction: float = 0.05) -> TextData:
        ids: list[int] = []
        for text in read_texts(path):
            ids.extend(tokenizer.encode(text))
            ids.append(tokenizer.eos_id)
        return cls(torch.tensor(ids, dtype=torch.long), val_fraction)

    def split_tokens(self, split: str) -> torch.Tensor:
        cut = int(len(self.tokens) * (1 - self.val_fraction))
        return self.tokens[:cut] if split == "train" else self.tokens[cut:]

    def batch(self, batch_size: int, seq_len: int, seed: int, index: int, split: str = "train") -> Batch:
        """Random windows of seq_len + 1 tokens: inputs are the first L, targets the next-token shift."""
        tokens = self.split_tokens(split)
        if len(tokens) < seq_len + 2:
            raise ConfigError(f"the {split} split has {len(tokens)} tokens, fewer than seq_len + 2 = {seq_len + 2}")
        starts = torch.randint(
            0, len(tokens) - seq_len - 1, (batch_size,), generator=batch_generator(seed, index, split)
        )
        windows = torch.stack([tokens[start : start + seq_len + 1] for start in starts.tolist()])
        return Batch(windows[:, :-1], windows[:, 1:])

    def sequential_batches(self, batch_size: int, seq_len: int, split: str = "test"):
        """Non-overlapping windows covering the split once (for evaluation)."""
        tokens = self.split_tokens(split)
        n_windows = (len(tokens) - 1) // seq_len
        windows = tokens[: n_windows * seq_len + 1]
        for first in range(0, n_windows, batch_size):
            rows = range(first, min(first + batch_size, n_windows))
            chunk = torch.stack([windows[r * seq_len : (r + 1) * seq_len + 1] for r in rows])
            yield Batch(chunk[:, :-1], chunk[:, 1:])
