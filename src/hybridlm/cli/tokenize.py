"""`hybridlm tokenize SRC --out DIR`: text into memory-mapped token shards that `train --data DIR`
and `eval --data DIR` read directly.

hybridlm tokenize corpus/ --out shards/ --tokenizer bpe:4096
"""

from __future__ import annotations

from .common import format_table, human

HELP = "text file or folder -> memory-mapped uint16/uint32 token shards + index (read by train and eval)"


def add_arguments(parser) -> None:
    parser.add_argument("source", help="a text file or a folder of .txt/.md files")
    parser.add_argument("--out", required=True, help="a new folder for the shards")
    parser.add_argument(
        "--tokenizer",
        default="byte",
        help="byte (default), bpe:VOCAB (trained on SOURCE), or a folder holding tokenizer.json (a run)",
    )


def run(args) -> None:
    from ..data.shards import write_shards
    from .train import build_tokenizer

    tokenizer = build_tokenizer(args.tokenizer, args.source)
    index = write_shards(args.source, args.out, tokenizer)
    print(
        format_table(
            ["files", "bytes", "tokens", "shards", "dtype", "tokenizer"],
            [
                [
                    len(index["sources"]),
                    human(index["bytes"]),
                    human(index["tokens"]),
                    len(index["shards"]),
                    index["dtype"],
                    f"{index['tokenizer']['kind']} ({index['tokenizer']['vocab_size']} ids)",
                ]
            ],
        )
    )
    print(f"wrote {args.out}")
