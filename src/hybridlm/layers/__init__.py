"""Sub-layer registry: pattern character -> class. Adding a mixer is one file plus one line here.

Every class has `from_config(config, char)`, `forward(x, state, ctx)` (state None: no cache) and
`allocate_state(batch_size, max_len, device, dtype)`.
"""

from .attention import Attention
from .blend import Blend
from .hyena import Hyena
from .mamba import Mamba
from .mamba2 import Mamba2
from .mlp import MLP
from .moe import MoE
from .recurrent import RecurrentBlock
from .shared import SharedAttention

MIXERS = {
    "A": Attention,
    "L": Attention,
    "S": SharedAttention,
    "M": Mamba,
    "D": Mamba2,
    "R": RecurrentBlock,
    "H": Hyena,
    "P": Blend,
    "F": MLP,
    "E": MoE,
}

__all__ = [
    "MIXERS",
    "Attention",
    "Blend",
    "Hyena",
    "Mamba",
    "Mamba2",
    "MLP",
    "MoE",
    "RecurrentBlock",
    "SharedAttention",
]
