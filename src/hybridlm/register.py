"""`register_mixer`: add a mixer family from your own code, without editing the package.

    import hybridlm
    hybridlm.register_mixer(MyMixer)      # a `hybridlm.layers.Mixer` subclass
    model = hybridlm.HybridLM(hybridlm.ModelConfig(pattern="(XF)*4", my_section={"width": 8}))

After it, the family's characters parse in patterns, its section is a field of `ModelConfig`
(dotted overrides, JSON, checkpoints), and training, cached decoding, `analyze` and `inspect`
ask its hooks. A checkpoint of such a model loads once the family is registered again.
"""

from __future__ import annotations

from .config import PLUGIN_SECTIONS, add_section
from .layers.base import Mixer
from .layers.registry import register


def register_mixer(family: type[Mixer]) -> type[Mixer]:
    """Register `family` (checked: new characters and section, the core hooks); returns it (a decorator)."""
    register(family)
    if family.Config is not None:
        add_section(family.config_name, family.Config)
        PLUGIN_SECTIONS[family.config_name] = family.Config
    return family
