"""Token shards: a folder of raw uint16/uint32 token files plus `index.json`, written once by
`hybridlm tokenize` and memory-mapped by `train` and `eval` (no copy of the tokens in RAM).

index.json records the tokenizer (its kind, vocabulary size and the SHA-256 of its tokenizer.json)
so shards are refused by a model with another tokenizer, and every source file with its byte and
token counts, so evaluation can report bits per byte.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..config import ConfigError
from ..ownership import check_replaceable, marker
from .text import encode_files, text_files, token_dtype
from .tokenizer import TOKENIZER_FILE, ByteTokenizer

INDEX_FILE = "index.json"
SHARD_TOKENS = 1 << 26  # tokens per shard file (128 MiB of uint16)


def tokenizer_identity(tokenizer) -> dict:
    if isinstance(tokenizer, ByteTokenizer):
        return {"kind": "byte", "vocab_size": tokenizer.vocab_size, "sha256": "byte"}
    text = tokenizer.tokenizer.to_str()
    return {"kind": "bpe", "vocab_size": tokenizer.vocab_size, "sha256": hashlib.sha256(text.encode()).hexdigest()}


def is_shard_dir(path) -> bool:
    return Path(path).is_dir() and (Path(path) / INDEX_FILE).is_file()


def write_shards(source, out, tokenizer, shard_tokens: int = SHARD_TOKENS) -> dict:
    """Tokenize a text file or folder into shards in the new folder `out`; returns the index."""
    out = Path(out)
    check_replaceable(out, "--out")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty: shards go to a new folder")
    files = list(text_files(source))  # a missing source is refused before `out` is made
    out.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tokenizer.vocab_size)
    sources, shards, pending, pending_count = [], [], [], 0

    def flush() -> None:
        nonlocal pending, pending_count
        if pending_count:
            name = f"tokens-{len(shards):05d}.bin"
            np.concatenate(pending).astype(dtype).tofile(out / name)
            shards.append({"file": name, "tokens": pending_count})
            pending, pending_count = [], 0

    for file in files:
        tokens, n_bytes = encode_files([file], tokenizer)
        if sources and tokenizer.eos_id is not None:  # documents separated as encode_files does
            tokens = np.concatenate([np.asarray([tokenizer.eos_id], dtype=tokens.dtype), tokens])
        sources.append({"path": str(file), "bytes": n_bytes, "tokens": int(len(tokens))})
        pending.append(tokens)
        pending_count += len(tokens)
        if pending_count >= shard_tokens:
            flush()
    flush()
    index = {
        "format": "hybridlm-token-shards",
        "version": 1,
        "dtype": np.dtype(dtype).name,
        "tokenizer": tokenizer_identity(tokenizer),
        "tokens": sum(s["tokens"] for s in shards),
        "bytes": sum(s["bytes"] for s in sources),
        "shards": shards,
        "sources": sources,
    }
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    tokenizer.save(out)
    owned = [INDEX_FILE, *(s["file"] for s in shards), *([TOKENIZER_FILE] if (out / TOKENIZER_FILE).exists() else [])]
    (out / "hybridlm.json").write_text(marker("shards", owned))
    return index


def read_shards(path, tokenizer) -> tuple[np.ndarray, int]:
    """The shards' tokens (one memory map per shard; a single shard is never copied) and their
    source bytes; refused when they were tokenized with another tokenizer."""
    path = Path(path)
    try:
        index = json.loads((path / INDEX_FILE).read_text())
        dtype = np.dtype(index["dtype"])
        shards = index["shards"]
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{path / INDEX_FILE}: not a token-shard index ({error})") from None
    expected = tokenizer_identity(tokenizer)
    if index.get("tokenizer") != expected:
        raise ConfigError(
            f"{path}: tokenized with the {_described(index.get('tokenizer') or {})} tokenizer, the model's is "
            f"the {_described(expected)}: tokenize again with the model's tokenizer"
        )
    maps = []
    for shard in shards:
        file = path / shard["file"]
        if not file.is_file() or file.stat().st_size != shard["tokens"] * dtype.itemsize:
            raise ConfigError(f"{file}: missing or not {shard['tokens']} tokens long (a truncated shard?)")
        maps.append(np.memmap(file, dtype=dtype, mode="r"))
    tokens = maps[0] if len(maps) == 1 else np.concatenate(maps) if maps else np.zeros(0, dtype)
    return tokens, int(index.get("bytes", 0))


def _described(identity: dict) -> str:
    """The kind and its hash's first characters ("bpe a1b2c3d4e5f6"), or the kind alone ("byte")."""
    kind, digest = identity.get("kind", "unknown"), str(identity.get("sha256", ""))[:12]
    return kind if not digest or digest == kind else f"{kind} {digest}"
