"""hybridlm: build, train, measure and run hybrid Attention x State-Space language models."""

from .checkpoint import CheckpointError, load, save
from .config import ConfigError, ModelConfig
from .data.tokenizer import ByteTokenizer, load_tokenizer
from .hf import load_hf
from .model import HybridLM
from .pattern import PatternError
from .presets import presets
from .register import register_mixer

__all__ = [
    "ByteTokenizer",
    "CheckpointError",
    "ConfigError",
    "HybridLM",
    "ModelConfig",
    "PatternError",
    "load",
    "load_hf",
    "load_tokenizer",
    "presets",
    "register_mixer",
    "save",
]
__version__ = "0.1.0"
