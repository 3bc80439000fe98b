"""The `hybridlm` model type of lm-evaluation-harness: any saved hybridlm model, any pattern, no export.

    lm_eval --model hybridlm --model_args pretrained=RUN_DIR,batch_size=8 --tasks T

(lm-eval 0.4.13 has no plugin hook: `python -m hybridlm.lm_eval` registers this class, then runs
lm_eval's own command line.) Scoring and generation are in scoring.py.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict

import torch
from lm_eval import utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from ..checkpoint import load
from ..data.tokenizer import load_tokenizer
from .scoring import generate_until, sampling_settings, score_continuations

log = logging.getLogger(__name__)


def pick_device(device: str | None) -> str:
    """lm_eval's CLI asks for cuda:0 unless told otherwise: fall back to the CPU where there is no GPU."""
    if device is None or (device.startswith("cuda") and not torch.cuda.is_available()):
        if device is not None:
            log.warning("%s requested but CUDA is not available: running on the CPU", device)
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@register_model("hybridlm")
class HybridLMEval(TemplateLM):
    def __init__(
        self,
        pretrained: str,
        batch_size: int | str = 1,
        device: str | None = None,
        max_length: int = 2048,
        max_gen_toks: int = 256,
        max_batch_size: int | None = None,
        **unused,
    ):
        super().__init__()
        if unused:
            raise ValueError(f"unknown hybridlm model_args: {', '.join(sorted(unused))}")
        device = pick_device(device)
        self.model = load(pretrained, device).eval()
        self.tokenizer = load_tokenizer(pretrained)
        self._device = device
        self.batch_size = 1 if str(batch_size).startswith("auto") else int(batch_size)
        self.max_length, self.max_gen_toks = int(max_length), int(max_gen_toks)

    @classmethod
    def create_from_arg_obj(cls, arg_dict, additional_config=None):
        """--model_args win over lm_eval's own flags (it passes --batch_size, default 1, as well)."""
        extra = {key: value for key, value in (additional_config or {}).items() if value is not None}
        return cls(**{**extra, **arg_dict})

    @classmethod
    def create_from_arg_string(cls, arg_string, additional_config=None):
        return cls.create_from_arg_obj(utils.simple_parse_args_string(arg_string), additional_config)

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def device(self):
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return type(self.tokenizer).__name__

    def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        pairs = [(context, continuation) for _, context, continuation in requests]
        results = score_continuations(self.model, pairs, self.batch_size, self.max_length)
        for (key, _, _), result in zip(requests, results):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole documents, in disjoint windows of `max_length` (lm-eval's scheme)."""
        windows, owners = [], []
        for index, (string,) in enumerate(request.args for request in requests):
            tokens = self.tok_encode(string)
            for window in utils.get_rolling_token_windows(tokens, self.prefix_token_id, self.max_length, 1):
                windows.append(utils.make_disjoint_window(window))
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(
            owners, score_continuations(self.model, windows, self.batch_size, self.max_length)
        ):
            totals[owner] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Batches of requests with the same generation settings, longest context first."""
        groups = defaultdict(list)
        for index, request in enumerate(requests):
            groups[json.dumps(request.args[1], sort_keys=True, default=str)].append(index)
        outputs: list[str | None] = [None] * len(requests)
        for indices in groups.values():
            settings = dict(requests[indices[0]].args[1])
            sampling = sampling_settings(settings)  # first: an unsupported key is refused before any work
            until = settings.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_tokens = int(settings.get("max_gen_toks", self.max_gen_toks))
            keep = max(1, self.max_length - max_tokens)
            contexts = {
                index: self.tok_encode(requests[index].args[0])[-keep:] or [self.prefix_token_id] for index in indices
            }
            ordered = sorted(indices, key=lambda index: -len(contexts[index]))
            for start in range(0, len(ordered), self.batch_size):
                batch = ordered[start : start + self.batch_size]
                texts = generate_until(
                    self.model, self.tokenizer, [contexts[i] for i in batch], until, max_tokens, **sampling
                )
                for index, text in zip(batch, texts):
                    outputs[index] = text
                    self.cache_hook.add_partial("generate_until", requests[index].args, text)
        return outputs
