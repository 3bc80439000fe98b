"""Typed options of each mixer family, one dataclass per family; `ModelConfig` holds one of each.

Fields are addressed by dotted keys (`mamba.d_state=8`). Every switch a Hugging Face checkpoint
needs to be matched is a field here, never a code fork.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class AttentionConfig:
    """Causal GQA attention (`A`) and its sliding-window form (`L`)."""

    head_dim: int | None = None  # None: d_model // n_heads
    rope: bool = True
    rope_theta: float = 10000.0
    rope_fraction: float = 1.0  # partial RoPE: rotate the first fraction of head_dim (RecurrentGemma 0.5)
    window: int = 128  # `L`: the number of keys a query sees, itself included
    qkv_bias: bool = False
    out_bias: bool = False
    scale: float | None = None  # None: head_dim ** -0.5
    short_conv: int = 0  # depthwise causal conv of this width on q, k, v (Primer's MDHA); 0 = off


@dataclass
class MambaConfig:
    """Mamba-1 selective SSM (`M`), Gu & Dao 2023."""

    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None  # None: ceil(d_model / 16)
    dt_min: float = 1e-3
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    proj_bias: bool = False
    n_heads: int = 1  # Zamba runs Mamba-1 as independent heads with their own x_proj/dt_proj
    inner_norms: bool = False  # Jamba: RMSNorm on dt, B and C after x_proj


@dataclass
class Mamba2Config:
    """Mamba-2 / SSD (`D`), Dao & Gu 2024."""

    d_state: int = 64
    d_conv: int = 4
    expand: int = 2
    head_dim: int = 64
    n_groups: int = 1
    chunk_size: int = 64  # 64 is fastest on CPU; the CUDA kernels use 256
    dt_min: float = 1e-3
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_limit: tuple[float, float] = (0.0, math.inf)  # clamp of dt after softplus (Zamba2: (1e-3, inf))
    conv_bias: bool = True
    proj_bias: bool = False
    norm_eps: float = 1e-5  # the gated RMSNorm before out_proj


@dataclass
class RGLRUConfig:
    """Griffin's recurrent block with the RG-LRU (`R`), De et al. 2024."""

    width: int | None = None  # D_RNN; None: round(4 * d_model / 3) rounded up to a multiple of n_heads
    n_heads: int | None = None  # blocks of the block-diagonal gates; None: the model's n_heads
    d_conv: int = 4
    c: float = 8.0
    a_min: float = 0.9  # a^c is initialised uniformly in [a_min, a_max]
    a_max: float = 0.999
    bias: bool = True  # on linear_x, linear_y, linear_out
    activation: str = "gelu_tanh"


@dataclass
class HyenaConfig:
    """Hyena order-2 operator (`H`) with a modal long filter h_t = Re sum_n R_n p_n^t (StripedHyena)."""

    short_conv: int = 3
    n_modes: int = 4  # complex poles per channel
    decay_min: float = 0.5  # initial |p| spread in [decay_min, decay_max]
    decay_max: float = 0.999
    proj_bias: bool = True


@dataclass
class BlendConfig:
    """Parallel alpha-blend (`P`): alpha * SSM(x) + (1 - alpha) * Attention(x), alpha per channel."""

    ssm: str = "M"
    attn: str = "A"
    alpha_init: float = 0.0  # logit of alpha; 0 -> alpha = 0.5


@dataclass
class MLPConfig:
    """Dense MLP (`F`): down(act(gate(x)) * up(x)) when gated."""

    d_ff: int | None = None  # None: 8/3 * d_model rounded up to a multiple of 8 (gated) or 4 * d_model
    activation: str = "silu"
    gated: bool = True
    bias: bool = False


@dataclass
class MoEConfig:
    """Mixture-of-Experts MLP (`E`): top-k of n_experts gated MLPs, softmax router."""

    n_experts: int = 8
    top_k: int = 2
    d_ff: int | None = None  # None: the MLP's d_ff
    aux_loss_coef: float = 1e-2
    normalize_top_k: bool = False  # Jamba: no renormalisation of the selected router weights


@dataclass
class SharedConfig:
    """The shared attention + MLP block (`S`), Zamba / Zamba2."""

    n_blocks: int = 1  # Zamba2 cycles 2 blocks A, B, A, B ...
    n_heads: int | None = None  # None: the model's n_heads
    n_kv_heads: int | None = None  # None: n_heads of the block
    d_ff: int | None = None  # None: the MLP's d_ff
    activation: str = "gelu"
    rope: bool = False
    lora_rank: int = 0  # per-invocation LoRA adapters (Zamba2); 0 = none
    lora_attention: bool = False  # adapters on q, k, v (needs lora_rank > 0)
    lora_mlp: bool = True  # adapter on the MLP's gate/up projection (needs lora_rank > 0)
    scale: float | None = None  # None: (head_dim / 2) ** -0.5 as Zamba does


SUBCONFIGS = {
    "attention": AttentionConfig,
    "mamba": MambaConfig,
    "mamba2": Mamba2Config,
    "rglru": RGLRUConfig,
    "hyena": HyenaConfig,
    "blend": BlendConfig,
    "mlp": MLPConfig,
    "moe": MoEConfig,
    "shared": SharedConfig,
}
