"""The mixer families: one `Mixer` subclass per file, listed once in `FAMILIES` (registry.py).

A family declares its pattern characters, its typed config and its hooks (base.py); the pattern,
`ModelConfig`, the model, the CLI listings and the analyses all read the registry. Users add a
family from their own code with `hybridlm.register_mixer(MyMixer)` (docs/adding-a-mixer.md).
"""

from .attention import Attention
from .base import CacheBytes, Decay, Flops, Mixer, no_weight_decay
from .blend import Blend
from .hyena import Hyena
from .mamba import Mamba
from .mamba2 import Mamba2
from .mixing import MixingOperator
from .mlp import MLP
from .moe import MoE
from .recurrent import RecurrentBlock
from .registry import FAMILIES, MIXERS, register
from .shared import SharedAttention

for _family in (Attention, SharedAttention, Mamba, Mamba2, RecurrentBlock, Hyena, Blend, MLP, MoE):
    register(_family)

__all__ = [
    "FAMILIES",
    "MIXERS",
    "MLP",
    "Attention",
    "Blend",
    "CacheBytes",
    "Decay",
    "Flops",
    "Hyena",
    "Mamba",
    "Mamba2",
    "Mixer",
    "MixingOperator",
    "MoE",
    "RecurrentBlock",
    "SharedAttention",
    "no_weight_decay",
    "register",
]
