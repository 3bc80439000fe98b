"""Text from a Hugging Face `datasets` source: `--data hf:NAME[:SPLIT]` (the `datasets` extra).

NAME is a dataset on the hub or a local folder: one written by `Dataset.save_to_disk` is read with
`load_from_disk`, anything else with `load_dataset` (which reads local data files too). The
documents are the `text` column, in order; SPLIT defaults to "train" (the only name a saved
dataset without splits answers to).
"""

from __future__ import annotations

from pathlib import Path

from ..config import ConfigError

HF_PREFIX = "hf:"
TEXT_COLUMN = "text"


def dataset_texts(spec: str) -> list[str]:
    """The `text` column of `hf:NAME[:SPLIT]`."""
    name, _, split = spec[len(HF_PREFIX) :].partition(":")
    split = split or "train"
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"{spec}: needs the datasets package: pip install 'hybridlm[datasets]'") from None
    try:
        if (Path(name) / "dataset_info.json").exists() or (Path(name) / "dataset_dict.json").exists():
            loaded = datasets.load_from_disk(name)
            if not isinstance(loaded, datasets.DatasetDict) and split != "train":
                raise KeyError(f"{name} holds one dataset without splits: drop :{split}")
            table = loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        else:
            table = datasets.load_dataset(name, split=split)
    except (FileNotFoundError, KeyError, ValueError) as error:
        raise ConfigError(f"{spec}: cannot load ({' '.join(str(error).split())[:200]})") from None
    if TEXT_COLUMN not in table.column_names:
        raise ConfigError(f"{spec}: no {TEXT_COLUMN!r} column (columns: {', '.join(table.column_names)})")
    return list(table[TEXT_COLUMN])
