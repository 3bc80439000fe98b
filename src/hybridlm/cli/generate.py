"""`hybridlm generate`: sample text from a saved model with its hybrid cache."""

from __future__ import annotations

from ..config import ConfigError

HELP = "sample text from a saved model with its hybrid cache"


def add_arguments(parser) -> None:
    parser.add_argument("directory", help="a directory written by hybridlm.save or `hybridlm train`")
    parser.add_argument(
        "--prompt", required=True, action="append", help="repeat it for a batch: one completion a prompt, ragged"
    )
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
    prompts = [torch.tensor(tokenizer.encode(text), dtype=torch.long) for text in args.prompt]
    if any(len(prompt) == 0 for prompt in prompts):
        raise ConfigError("--prompt is empty")
    if args.stream and len(prompts) > 1:
        raise ConfigError("--stream prints one completion: give one --prompt")
    sampling = dict(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop_tokens=[] if tokenizer.eos_id is None else [tokenizer.eos_id],
    )
    if args.stream:
        print(args.prompt[0], end="", flush=True)
        pending: list[int] = []
        for tokens in model.stream(prompts[0][None], args.max_new_tokens, **sampling):
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
    for output in model.generate(prompts, args.max_new_tokens, **sampling):  # a ragged batch, prompts included
        print(tokenizer.decode([t for t in output.tolist() if t != tokenizer.eos_id]))
