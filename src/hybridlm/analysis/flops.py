"""Forward FLOPs of a model as a function of sequence length N, asked of every sub-layer.

A multiply-add counts 2 FLOPs (the convention of `torch.utils.flop_counter`). The model is built on
the meta device (no weights allocated, so `paper` sizes cost nothing) and every mixer answers its
`flops(N)` hook (layers/base.py) from its own dimensions, in two kinds:

* dense, per token and independent of N: weight matmuls (linear maps, projections, gates, LoRA
  adapters, the LM head) and depthwise causal convolutions (2 * channels * k). A MoE layer counts
  its router and its top-k experts only.
* mixing, the work along the sequence, for a prefill of N tokens and for the N-th token alone: each
  family's docstring gives its count (attention: 4 * H * head_dim per (query, key) pair the mask
  allows; the scans: a fixed count per token; Hyena: FFT convolution in prefill, its modal
  recurrence in decode). Activations, norms, softmax and gates' nonlinearities are not counted.

Decoding "at context N" is the N-th token: the attention part of a prefill is the sum of the decode
steps before it. Training is 3 x forward (the backward pass of a matmul is two matmuls).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import ModelConfig
from ..layers.attention import attention_pairs
from ..layers.hyena import hyena_fft_flops
from .params import build_meta, build_sublayer

__all__ = ["FlopsReport", "LayerFlops", "attention_pairs", "hyena_fft_flops", "mixing_flops", "model_flops"]

TRAINING_FACTOR = 3  # forward + backward (2 x forward) for every matmul


@dataclass
class LayerFlops:
    """One sub-layer: dense FLOPs per token, and mixing FLOPs for a prefill of N and one decode step."""

    index: int
    char: str
    kind: str
    dense: int
    mixing_prefill: float  # total over the N tokens of one sequence
    mixing_decode: float  # the N-th token


@dataclass
class FlopsReport:
    seq_len: int
    layers: list[LayerFlops]
    lm_head: int  # dense FLOPs per token of the output projection
    by_kind: dict = field(default_factory=dict)

    @property
    def dense_per_token(self) -> int:
        return sum(layer.dense for layer in self.layers) + self.lm_head

    @property
    def prefill_total(self) -> float:
        """Forward FLOPs of one sequence of N tokens."""
        return self.dense_per_token * self.seq_len + sum(layer.mixing_prefill for layer in self.layers)

    @property
    def prefill_per_token(self) -> float:
        return self.prefill_total / self.seq_len

    @property
    def training_per_token(self) -> float:
        return TRAINING_FACTOR * self.prefill_per_token

    @property
    def decode_per_token(self) -> float:
        return self.dense_per_token + sum(layer.mixing_decode for layer in self.layers)

    def to_dict(self) -> dict:
        return {
            "seq_len": self.seq_len,
            "training_per_token": self.training_per_token,
            "prefill_per_token": self.prefill_per_token,
            "prefill_total": self.prefill_total,
            "decode_per_token": self.decode_per_token,
            "dense_per_token": self.dense_per_token,
            "by_kind": self.by_kind,
        }


def mixing_flops(config: ModelConfig, char: str, seq_len: int) -> tuple[float, float]:
    """(prefill of N tokens, decode of the N-th token) mixing FLOPs of one `char` sub-layer of `config`."""
    flops = build_sublayer(config, char).flops(seq_len)
    return flops.mixing_prefill, flops.mixing_decode


def model_flops(config: ModelConfig, seq_len: int) -> FlopsReport:
    """Per sub-layer dense and mixing FLOPs at sequence length N, and totals by sub-layer kind."""
    if seq_len < 1:
        raise ValueError("seq_len must be >= 1")
    model = build_meta(config)
    layers = []
    for index, layer in enumerate(model.layers):
        flops = layer.mixer.flops(seq_len)
        kind = layer.mixer.chars[layer.char]
        layers.append(LayerFlops(index, layer.char, kind, flops.dense, flops.mixing_prefill, flops.mixing_decode))
    report = FlopsReport(seq_len, layers, 2 * config.d_model * config.vocab_size)
    for layer in layers:
        kind = report.by_kind.setdefault(
            layer.kind, {"count": 0, "dense_per_token": 0, "mixing_prefill": 0.0, "mixing_decode": 0.0}
        )
        kind["count"] += 1
        kind["dense_per_token"] += layer.dense
        kind["mixing_prefill"] += layer.mixing_prefill
        kind["mixing_decode"] += layer.mixing_decode
    return report
