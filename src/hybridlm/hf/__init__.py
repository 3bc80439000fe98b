"""Hugging Face interop: import a transformers checkpoint directory, export one transformers loads.

    model = hybridlm.load_hf("path/to/hf_dir")         # config.json + (sharded) safetensors
    hybridlm.hf.save_hf(model, "out_dir")               # the family is inferred from the config

One module per transformers family holds its config mapping (`config_from_hf`, `config_to_hf`)
and its tensor-name rules; this file runs them. Nothing is unpickled and transformers itself is
not needed. Export refuses a model the family cannot express: it writes the config, reads it back
and requires the same numerics (see `common.numerics`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..checkpoint import saved_names
from ..config import ConfigError, ModelConfig
from ..model import HybridLM
from . import bamba, jamba, mamba, mamba2, recurrent_gemma, zamba, zamba2
from .common import differences, numerics
from .files import TensorSource, read_config, write_checkpoint
from .rules import check_coverage, export_tensors, import_tensors, reject_unused, rename

logger = logging.getLogger(__name__)

FAMILIES = {family.MODEL_TYPE: family for family in (mamba, mamba2, jamba, bamba, zamba, zamba2, recurrent_gemma)}


def family_of(model_type) -> object:
    if model_type == "hybridlm":
        raise ConfigError("this is already a hybridlm checkpoint (export it with --to-hf)")
    if model_type not in FAMILIES:
        raise ConfigError(
            f"model_type {model_type!r} is not supported; hybridlm converts {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[model_type]


def config_from_hf(hf: dict) -> ModelConfig:
    """Our config for a transformers config.json dict."""
    return family_of(hf.get("model_type")).config_from_hf(hf)


def load_hf(directory, dtype: torch.dtype = torch.float32, device="cpu") -> HybridLM:
    """A `HybridLM` with the weights of a transformers checkpoint directory (safetensors only).

    Raises `ConfigError` for an unsupported model_type or option, `CheckpointError` for missing,
    truncated or mismatched files; each message names the problem.
    """
    directory = Path(directory)
    hf = read_config(directory)
    family = family_of(hf.get("model_type"))
    config = family.config_from_hf(hf)
    source = TensorSource(directory)
    source.accept_legacy_names(getattr(family, "LEGACY_NAMES", {}))
    model = HybridLM(config)
    rules = _rules(family, config, _names_in_order(model))
    shapes = {name: tensor.shape for name, tensor in model.state_dict().items()}
    state = import_tensors(rules, source, shapes)
    tied_copies = getattr(family, "TIED_COPIES", None)
    reject_unused(
        source,
        lambda name: (
            name.endswith("rotary_emb.inv_freq")
            or (config.tie_embeddings and name == "lm_head.weight")
            or (tied_copies is not None and tied_copies.search(name) is not None)
        ),
    )
    model.load_state_dict(state, strict=False)
    logger.info("imported %s from %s as pattern %s", family.MODEL_TYPE, directory, config.pattern)
    return model.to(device=device, dtype=dtype)


def hf_config(config: ModelConfig, model_type: str | None = None) -> tuple[object, dict]:
    """(family, transformers config dict) for our config; infers the family when not given."""
    candidates = [family_of(model_type)] if model_type else list(FAMILIES.values())
    reasons = []
    for family in candidates:
        try:
            hf = family.config_to_hf(config)
            mismatches = differences(numerics(config), numerics(family.config_from_hf(hf)))
        except ConfigError as error:
            reasons.append(f"{family.MODEL_TYPE}: {error}")
            continue
        if not mismatches:
            return family, {"model_type": family.MODEL_TYPE, "architectures": [family.ARCHITECTURE], **hf}
        reasons.append(f"{family.MODEL_TYPE}: no equivalent for {', '.join(sorted(mismatches)[:3])}")
    if model_type:
        raise ConfigError(f"cannot export as {reasons[0]}")
    raise ConfigError(f"no Hugging Face family can hold pattern {config.pattern!r} ({'; '.join(reasons)})")


def save_hf(
    model: HybridLM, directory, model_type: str | None = None, extra_files=None, overwrite: bool = False
) -> Path:
    """Write `model` as a transformers checkpoint (config.json + model.safetensors, + `extra_files`
    such as tokenizer.json); returns the path. An earlier export is replaced only with `overwrite`."""
    family, hf = hf_config(model.config, model_type)
    hf["dtype"] = str(model.embed_tokens.weight.dtype).removeprefix("torch.")
    rules = _rules(family, model.config, _names_in_order(model))
    tensors = export_tensors(rules, model.state_dict())
    return write_checkpoint(Path(directory), hf, tensors, extra_files, overwrite)


def _names_in_order(model: HybridLM) -> list[str]:
    """The checkpoint's tensor names in module order, so errors name the first tensor that fails."""
    saved = saved_names(model)
    return [name for name in model.state_dict() if name in saved]


def _rules(family, config: ModelConfig, names: list[str]) -> list:
    rules = family.rules(config, names)
    if not config.tie_embeddings:
        rules.append(rename("lm_head.weight", "lm_head.weight"))
    check_coverage(rules, set(names))
    return rules


__all__ = ["FAMILIES", "config_from_hf", "hf_config", "load_hf", "save_hf"]
