"""`hybridlm generate`: sample text from a saved model with its hybrid cache."""

from __future__ import annotations

from ..config import ConfigError

HELP = "sample text from a saved model with its hybrid cache"


def add_arguments(parser) -> None:
    parser.add_argument("directory", help="a directory written by hybridlm.save or `hybridlm train`")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stream", action="store_true", help="print tokens as they are sampled")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model (a slow first call); on CPU eager decoding is faster, as one fused "
        "numba call a token (compiled: 0.67x transformer small, 0.33x mamba small; `hybridlm bench compiled`)",
    )


def run(args) -> None:
    import torch

    from ..checkpoint import load
    from ..data.tokenizer import load_tokenizer

    model = load(args.directory)
    if args.compile:
        model.compile()
    tokenizer = load_tokenizer(args.directory)
    prompt = torch.tensor([tokenizer.encode(args.prompt)])
    if prompt.shape[1] == 0:
        raise ConfigError("--prompt is empty")
    sampling = dict(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop_tokens=[] if tokenizer.eos_id is None else [tokenizer.eos_id],
    )
    if args.stream:
        print(args.prompt, end="", flush=True)
        pending: list[int] = []
        for tokens in model.stream(prompt, args.max_new_tokens, **sampling):
            token = int(tokens[0])
            if token < 0 or token == tokenizer.eos_id:
                break
            pending.append(token)
            text = tokenizer.decode(pending)
            if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                print(text, end="", flush=True)
                pending = []
        print(tokenizer.decode(pending))
        return
    output = model.generate(prompt, args.max_new_tokens, **sampling)[0].tolist()
    print(tokenizer.decode([t for t in output if t != tokenizer.eos_id]))
