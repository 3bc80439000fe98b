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
