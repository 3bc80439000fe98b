"""Tokenizers: the byte-level default and Hugging Face `tokenizers` (BPE) behind one interface.

Both expose `encode(text) -> list[int]`, `decode(ids) -> str`, `vocab_size`, `eos_id` and
`save(directory)` (a `tokenizer.json` for BPE; nothing for bytes, the default when none is saved).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError

TOKENIZER_FILE = "tokenizer.json"


class ByteTokenizer:
    """UTF-8 bytes 0..255, then special tokens: 256 <eos>, 257 <pad>."""

    eos_id = 256
    pad_id = 257
    vocab_size = 258

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    def save(self, directory) -> None:
        """The byte tokenizer is the default: nothing to write."""


EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "<|im_end|>")


class HFTokenizer:
    """A `tokenizers.Tokenizer` (e.g. byte-level BPE); `eos_id` is its end-of-text token, or None."""

    def __init__(self, tokenizer, eos_token: str | None = None):
        self.tokenizer = tokenizer
        candidates = (eos_token,) if eos_token else EOS_CANDIDATES
        self.eos_id = next((i for i in map(tokenizer.token_to_id, candidates) if i is not None), None)
        self.vocab_size = tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids])

    def save(self, directory) -> None:
        self.tokenizer.save(str(Path(directory) / TOKENIZER_FILE))

    @classmethod
    def from_file(cls, path) -> HFTokenizer:
        """Refused in one line (CheckpointError) when `path` is not a file `tokenizers` can read."""
        from tokenizers import Tokenizer

        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as error:  # tokenizers raises a bare Exception for a malformed file
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise CheckpointError(f"{path}: not a tokenizer file `tokenizers` can read ({reason})") from None


def train_bpe(texts, vocab_size: int, eos_token: str = "<|endoftext|>") -> HFTokenizer:
    """Train a byte-level BPE tokenizer on an iterable of strings."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[eos_token], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return HFTokenizer(tokenizer, eos_token)


def load_tokenizer(directory) -> ByteTokenizer | HFTokenizer:
    """The tokenizer saved in a checkpoint directory, or the byte-level default."""
    path = Path(directory) / TOKENIZER_FILE
    return HFTokenizer.from_file(path) if path.exists() else ByteTokenizer()
