"""Forward FLOPs of a model as a function of sequence length N, from its config alone.

A multiply-add counts 2 FLOPs (the convention of `torch.utils.flop_counter`). Two kinds of work:

* dense, per token and independent of N: every weight matmul (linear maps, Mamba's x/dt
  projections, the RG-LRU's block-diagonal gates, LoRA adapters, the LM head) and every depthwise
  causal convolution (2 * channels * k, attention's optional short conv on q, k, v included).
  A MoE layer counts its router and its top-k experts only.
* mixing, the work along the sequence:
  - attention: QK^T and PV over the (query, key) pairs the mask allows, 4 * H * head_dim per pair.
    Prefill of N tokens has sum_{t<=N} min(t, w) pairs (N(N+1)/2 without a window): O(N^2 d);
    a dense kernel that scores the whole N x N square does about twice that.
  - Mamba (recurrent form, per token and (channel, state) element): dt * A, exp, times B (3), the
    update A_bar h + B_bar x (2), C . h (2); per channel dt * x (1) and the skip D x (2):
    7 d_in n + 3 d_in. Mamba-2 has one decay per head (2 per head) and dt x once per (head, p):
    5 d_in n + 3 d_in + 2 heads. Chunked (SSD) prefill trades extra FLOPs for matmuls.
  - RG-LRU, per channel: a_t = exp(-c r_t softplus(Lambda)) (3), sqrt(1 - a_t^2) (3), i_t x_t
    times it (2), the update (2): 10 w.
  - Hyena prefill: FFT convolution with zero padding to 2N: three real FFTs of 2N points
    (2.5 * 2N log2 2N each) and a complex product (6 per frequency, N + 1 of them) per channel,
    the modal filter h_t = Re sum_m R_m p_m^t (9 per (channel, mode, t)) and the skip (2 per
    channel); decode runs the modal recurrence: complex p * s (6), + u (1), Re(R s) (3), sum (1)
    per mode, and the skip: 11 d m + 2 d.
  Activations, norms, softmax and gates' nonlinearities are not counted (as in the usual 6N rule).

Decoding "at context N" is the N-th token: it attends to min(N, w) keys, itself included, so the
attention part of a prefill is the sum of the decode steps before it. Training is 3 x forward
(the backward pass of a matmul is two matmuls).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..config import ModelConfig
from ..pattern import SUBLAYER_NAMES
from .cache_size import attention_shape

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


def attention_pairs(seq_len: int, window: int | None) -> int:
    """(query, key) pairs a causal mask allows over N tokens: sum_{t=1..N} min(t, w)."""
    if window is None or seq_len <= window:
        return seq_len * (seq_len + 1) // 2
    return window * (window + 1) // 2 + (seq_len - window) * window


def linear(d_in: int, d_out: int) -> int:
    return 2 * d_in * d_out


def mlp_dense(d: int, d_ff: int, gated: bool) -> int:
    return (3 if gated else 2) * linear(d, d_ff)


def dense_flops(config: ModelConfig, char: str) -> int:
    """Weight matmuls and depthwise convolutions of one sub-layer, per token."""
    d = config.d_model
    if char in "AL":
        heads, kv_heads, head_dim = attention_shape(config, char)
        short_conv = 2 * (heads + 2 * kv_heads) * head_dim * config.attention.short_conv  # 0 when off
        projections = linear(d, heads * head_dim) + 2 * linear(d, kv_heads * head_dim) + linear(heads * head_dim, d)
        return projections + short_conv
    if char == "S":
        return _shared_dense(config)
    if char == "M":
        options, d_inner = config.mamba, config.mamba.expand * d
        rank = config.dt_rank
        projections = linear(d_inner, rank + 2 * options.d_state) + linear(rank, d_inner)
        return linear(d, 2 * d_inner) + 2 * d_inner * options.d_conv + projections + linear(d_inner, d)
    if char == "D":
        options = config.mamba2
        d_inner = options.expand * d
        conv_dim = d_inner + 2 * options.n_groups * options.d_state
        in_width = d_inner + conv_dim + d_inner // options.head_dim
        return linear(d, in_width) + 2 * conv_dim * options.d_conv + linear(d_inner, d)
    if char == "R":
        width, heads = config.rnn_width, config.rglru.n_heads or config.n_heads
        gates = 2 * heads * linear(width // heads, width // heads)
        return 2 * linear(d, width) + 2 * width * config.rglru.d_conv + gates + linear(width, d)
    if char == "H":
        return linear(d, 3 * d) + 2 * 3 * d * config.hyena.short_conv + linear(d, d)
    if char == "P":
        return dense_flops(config, config.blend.ssm) + dense_flops(config, config.blend.attn)
    if char == "F":
        return mlp_dense(d, config.d_ff, config.mlp.gated)
    if char == "E":
        expert = mlp_dense(d, config.moe.d_ff or config.d_ff, config.mlp.gated)
        return linear(d, config.moe.n_experts) + config.moe.top_k * expert
    raise ValueError(f"unknown sub-layer {char!r}")


def _shared_dense(config: ModelConfig) -> int:
    """One `S` invocation: attention reading [x, embeddings] (2d), its MLP, adapters, output linear."""
    d, options = config.d_model, config.shared
    heads, kv_heads, head_dim = attention_shape(config, "S")
    q_width, kv_width = heads * head_dim, kv_heads * head_dim
    d_ff = options.d_ff or config.d_ff
    total = linear(2 * d, q_width) + 2 * linear(2 * d, kv_width) + linear(q_width, d)
    total += mlp_dense(d, d_ff, gated=True) + linear(d, d)
    rank = options.lora_rank
    if rank and options.lora_attention:
        total += linear(2 * d, rank) + linear(rank, q_width) + 2 * (linear(2 * d, rank) + linear(rank, kv_width))
    if rank and options.lora_mlp:
        total += linear(d, rank) + linear(rank, 2 * d_ff)
    return total


def mixing_flops(config: ModelConfig, char: str, seq_len: int) -> tuple[float, float]:
    """(prefill of N tokens, decode of the N-th token) FLOPs of the sequence-mixing part."""
    d = config.d_model
    if char in "ALS":
        heads, _, head_dim = attention_shape(config, char)
        window = config.attention.window if char == "L" else None
        per_pair = 4 * heads * head_dim
        return per_pair * attention_pairs(seq_len, window), per_pair * min(seq_len, window or seq_len)
    if char == "M":
        d_inner = config.mamba.expand * d
        per_token = 7 * d_inner * config.mamba.d_state + 3 * d_inner
        return per_token * seq_len, per_token
    if char == "D":
        options = config.mamba2
        d_inner = options.expand * d
        per_token = 5 * d_inner * options.d_state + 3 * d_inner + 2 * (d_inner // options.head_dim)
        return per_token * seq_len, per_token
    if char == "R":
        per_token = 10 * config.rnn_width
        return per_token * seq_len, per_token
    if char == "H":
        return hyena_fft_flops(d, config.hyena.n_modes, seq_len), 11 * d * config.hyena.n_modes + 2 * d
    if char == "P":
        ssm, attn = mixing_flops(config, config.blend.ssm, seq_len), mixing_flops(config, config.blend.attn, seq_len)
        return ssm[0] + attn[0], ssm[1] + attn[1]
    return 0, 0


def hyena_fft_flops(channels: int, n_modes: int, seq_len: int) -> float:
    """FFT long convolution of N tokens, zero-padded to 2N, plus building the modal filter."""
    n_fft = 2 * seq_len
    fft = 2.5 * n_fft * math.log2(n_fft)  # one real FFT (half of the 5 n log2 n of a complex one)
    per_channel = 3 * fft + 6 * (seq_len + 1) + 9 * n_modes * seq_len + 2 * seq_len
    return channels * per_channel


def model_flops(config: ModelConfig, seq_len: int) -> FlopsReport:
    """Per sub-layer dense and mixing FLOPs at sequence length N, and totals by sub-layer kind."""
    if seq_len < 1:
        raise ValueError("seq_len must be >= 1")
    layers = []
    for index, char in enumerate(config.chars):
        prefill, decode = mixing_flops(config, char, seq_len)
        layers.append(LayerFlops(index, char, SUBLAYER_NAMES[char], dense_flops(config, char), prefill, decode))
    report = FlopsReport(seq_len, layers, linear(config.d_model, config.vocab_size))
    for layer in layers:
        kind = report.by_kind.setdefault(
            layer.kind, {"count": 0, "dense_per_token": 0, "mixing_prefill": 0.0, "mixing_decode": 0.0}
        )
        kind["count"] += 1
        kind["dense_per_token"] += layer.dense
        kind["mixing_prefill"] += layer.mixing_prefill
        kind["mixing_decode"] += layer.mixing_decode
    return report
