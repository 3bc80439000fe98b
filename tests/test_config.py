import json
import math

import pytest

from hybridlm import ConfigError, ModelConfig, PatternError
from hybridlm.presets import presets


@pytest.mark.parametrize("name", presets())
@pytest.mark.parametrize("size", ["tiny", "small", "paper"])
def test_json_round_trip(name, size):
    config = ModelConfig.from_preset(name, size)
    again = ModelConfig.from_json(config.to_json())
    assert again == config
    assert json.loads(config.to_json())["layer_types"] == config.layer_types


def test_dotted_and_nested_overrides():
    config = ModelConfig.from_preset("jamba", "tiny", **{"mamba.d_state": 4}, moe={"top_k": 1}, d_model=32)
    assert (config.mamba.d_state, config.moe.top_k, config.d_model) == (4, 1, 32)


def test_string_overrides_are_typed():
    config = ModelConfig().with_overrides(
        {
            "attention.rope": "false",
            "attention.window": "7",
            "logit_softcap": "30",
            "mamba2.dt_limit": "0.001,inf",
            "n_kv_heads": "none",
        }
    )
    assert config.attention.rope is False and config.attention.window == 7 and config.logit_softcap == 30.0
    assert config.mamba2.dt_limit == (0.001, math.inf) and config.n_kv_heads is None


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"mamba.d_sate": 8}, "did you mean 'mamba.d_state'"),
        ({"mamb.d_state": 8}, "did you mean 'mamba'"),
        ({"d_modle": 8}, "did you mean 'd_model'"),
        ({"n_kv_heads": 3}, "must divide n_heads"),
        ({"moe.top_k": 9}, "moe.top_k"),
        ({"attention.window": "x"}, "cannot read 'x'"),
        ({"mlp.activation": "tanhh"}, "mlp.activation"),
        ({"blend.ssm": "A"}, "blend.ssm"),
    ],
)
def test_bad_values_raise_with_a_hint(overrides, message):
    base = ModelConfig(pattern="(AF ME)*2")
    with pytest.raises(ConfigError, match=message):
        base.with_overrides(overrides)


def test_unknown_field_in_json_names_nearest():
    data = ModelConfig().to_dict()
    data["attention"]["windw"] = 3
    with pytest.raises(ConfigError, match="did you mean 'attention.window'"):
        ModelConfig.from_dict(data)


def test_layer_types_must_match_pattern():
    data = ModelConfig(pattern="(AF)*2").to_dict()
    data["layer_types"] = ["attention", "mlp"]
    with pytest.raises(ConfigError, match="layer_types does not match"):
        ModelConfig.from_dict(data)


def test_bad_pattern_raises_pattern_error():
    with pytest.raises(PatternError, match="column 3"):
        ModelConfig(pattern="AFQ")


def test_unknown_preset_suggests():
    with pytest.raises(ConfigError, match="did you mean 'jamba'"):
        ModelConfig.from_preset("jambaa")
    with pytest.raises(ConfigError, match="unknown size"):
        ModelConfig.from_preset("jamba", "huge")


def test_griffin_embedding_scale_follows_an_overridden_width():
    assert ModelConfig.from_preset("griffin", "tiny").embedding_scale == 8.0
    assert ModelConfig.from_preset("griffin", "tiny", d_model=128).embedding_scale == pytest.approx(128**0.5)
    assert ModelConfig.from_preset("hawk", "tiny", d_model=128, embedding_scale=3.0).embedding_scale == 3.0


# ---- model values are validated before any work, one line naming the field and its range -------------
SIZE_FIELDS = [
    "d_model", "vocab_size", "n_heads", "n_kv_heads", "attention.window", "attention.head_dim", "mamba.d_state",
    "mamba.d_conv", "mamba.expand", "mamba.dt_rank", "mamba.n_heads", "mamba2.d_state", "mamba2.d_conv",
    "mamba2.expand", "mamba2.head_dim", "mamba2.n_groups", "mamba2.chunk_size", "rglru.width", "rglru.n_heads",
    "rglru.d_conv", "hyena.short_conv", "hyena.n_modes", "mlp.d_ff", "moe.n_experts", "moe.top_k", "moe.d_ff",
    "shared.n_blocks", "shared.n_heads", "shared.n_kv_heads", "shared.d_ff",
]  # fmt: skip
POSITIVE_FLOATS = [
    "norm_eps", "init_std", "embedding_scale", "logit_softcap", "attention.rope_theta", "attention.scale",
    "mamba.dt_min", "mamba.dt_max", "mamba.dt_init_floor", "mamba2.dt_min", "mamba2.norm_eps", "rglru.c",
    "shared.scale",
]  # fmt: skip
EVERY_FAMILY = "(AF LE MF DF RF HF PF SM)*1"


def _refusal(overrides: dict) -> str:
    with pytest.raises(ConfigError) as error:
        ModelConfig(pattern=EVERY_FAMILY, d_model=64, n_heads=4).with_overrides(overrides)
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("key", SIZE_FIELDS)
@pytest.mark.parametrize("value", [0, -3])
def test_sizes_and_counts_must_be_at_least_one(key, value):
    assert _refusal({key: value}) == f"{key}={value} must be an integer >= 1"


@pytest.mark.parametrize("key", POSITIVE_FLOATS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0.0, -1.0])
def test_eps_and_scales_must_be_finite_and_positive(key, value):
    assert _refusal({key: value}) == f"{key}={value} must be finite and > 0"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"attention.rope_fraction": 0.0}, "attention.rope_fraction=0.0 must be in (0, 1]"),
        ({"attention.short_conv": -1}, "attention.short_conv=-1 must be >= 0"),
        ({"mamba.dt_min": 0.5, "mamba.dt_max": 0.1}, "mamba.dt_min=0.5 must be <= mamba.dt_max=0.1"),
        ({"mamba2.dt_limit": (0.5, 0.1)}, "mamba2.dt_limit=(0.5, 0.1) must be (low, high) with 0 <= low <= high"),
        ({"rglru.a_max": 1.0}, "need 0 < a_min <= a_max < 1"),
        ({"hyena.decay_min": 0.0}, "need 0 < decay_min <= decay_max < 1"),
        ({"moe.aux_loss_coef": float("nan")}, "moe.aux_loss_coef=nan must be finite and >= 0"),
        ({"shared.lora_rank": -1}, "shared.lora_rank=-1 must be >= 0"),
        ({"d_model": True}, "d_model=True must be an integer >= 1"),
    ],
)
def test_ranges_name_the_field_and_the_allowed_range(overrides, message):
    assert message in _refusal(overrides)


def test_cli_refuses_bad_model_values_in_one_line(capsys):
    from hybridlm.cli import main

    for override in ("mamba.d_state=0", "norm_eps=nan"):
        assert main(["inspect", "mamba", "--size", "tiny", "--set", override]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and override.split("=")[0] in err
