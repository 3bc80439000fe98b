"""A family registered from outside the package (tests/ema_mixer.py, one `register_mixer` call) works
everywhere, and every registered family implements the whole contract.

The generic suite (causality, gradients, cache = full forward, chunked prefill, cost = allocated
bytes, FLOPs = flop counter, mixing operator = output) runs on it through its entry
`Y-outside-the-package` in helpers.MIXER_CASES; this file adds what is specific to plugging in.
"""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

import hybridlm
from hybridlm import ConfigError, HybridLM, ModelConfig
from hybridlm.analysis.mixing import layer_mixing
from hybridlm.cli import main
from hybridlm.layers import FAMILIES, MIXERS
from hybridlm.layers.base import missing_hooks
from hybridlm.layers.context import Context
from hybridlm.train import TrainConfig, build_optimizer, train

from .ema_mixer import EMA
from .helpers import tiny_config


def test_every_registered_family_implements_every_hook():
    assert EMA in FAMILIES and len(FAMILIES) >= 10
    assert {family.__name__: missing_hooks(family) for family in FAMILIES} == {f.__name__: [] for f in FAMILIES}


def test_one_call_registers_characters_and_config_section():
    assert MIXERS["Y"] is EMA
    config = tiny_config(pattern="(YF)*2").with_overrides({"ema.decay_min": "0.6"})
    assert config.ema.decay_min == 0.6 and config.layer_types == ["ema", "mlp", "ema", "mlp"]
    assert ModelConfig.from_json(config.to_json()) == config
    with pytest.raises(ConfigError, match="ema.decay_min=0.0"):
        tiny_config(pattern="Y", ema={"decay_min": 0.0})


def test_registering_a_taken_character_or_a_class_without_forward_is_refused():
    class Clash(EMA):
        chars = {"M": "clash"}
        config_name, Config = None, None

    with pytest.raises(ConfigError, match="'M' already belongs to Mamba"):
        hybridlm.register_mixer(Clash)

    class NoForward(hybridlm.layers.Mixer):
        chars = {"Q": "no_forward"}

        @classmethod
        def from_config(cls, config, char, ordinal=0):
            return cls()

        def allocate_state(self, batch_size, max_len, device, dtype):
            return None

    with pytest.raises(ConfigError, match="does not implement forward"):
        hybridlm.register_mixer(NoForward)
    assert "Q" not in MIXERS


def test_a_config_without_validate_is_refused_at_registration():
    import dataclasses

    @dataclasses.dataclass
    class PlainOptions:
        width: int = 4

    class NoValidate(EMA):
        chars = {"V": "no_validate"}
        config_name, Config = "no_validate", PlainOptions

    with pytest.raises(ConfigError, match=r"Config needs validate\(self, model_config, chars\)"):
        hybridlm.register_mixer(NoValidate)
    assert "V" not in MIXERS
    ModelConfig(pattern="AF", d_model=32, n_heads=4)  # every config used to fail once it was registered


def test_a_section_of_an_unregistered_family_says_so():
    with pytest.raises(ConfigError, match="unknown config section 'conv_plugin': no registered mixer has it"):
        ModelConfig.from_dict({"pattern": "AF", "conv_plugin": {"width": 3}})


def test_mixing_matrix_is_the_jacobian_along_the_sequence():
    """The EMA is linear: d y_t / d x_s = W_out diag(M[:, t, s]) W_in, M from its mixing operator."""
    model = HybridLM(tiny_config(pattern="Y")).double().eval()
    mixer, length = model.layers[0].mixer, 9
    x = torch.randn(1, length, 32, dtype=torch.float64)
    ctx = Context(positions=torch.arange(length).unsqueeze(0))
    jacobian = torch.autograd.functional.jacobian(lambda inputs: mixer(inputs, None, ctx), x)[0, :, :, 0]
    (operator,) = mixer.mixing_operators(x, ctx)
    matrices = operator.matrix()  # (d, N, N)
    expected = torch.einsum("ic,cts,cj->tisj", mixer.out_proj.weight, matrices, mixer.in_proj.weight)
    assert jacobian.abs().max() > 1e-3
    assert torch.allclose(jacobian, expected, atol=1e-12)


def test_save_load_training_and_no_weight_decay(tmp_path):
    config = tiny_config(pattern="Y A F")
    settings = TrainConfig(
        task="mqar", task_settings={"vocab_size": 50, "seq_len": 24, "n_pairs": 4}, steps=6, batch_size=4
    )
    settings.log_every, settings.eval_batches, settings.warmup_steps = 2, 1, 2
    result = train(config, settings, out=tmp_path / "run")
    assert result.metrics and all(torch.isfinite(torch.tensor(m["loss"])) for m in result.metrics)
    loaded = hybridlm.load(tmp_path / "run")
    assert isinstance(loaded.layers[0].mixer, EMA) and loaded.config == config
    hybridlm.save(loaded, tmp_path / "again")
    reloaded, tokens = hybridlm.load(tmp_path / "again").eval(), torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        assert torch.equal(reloaded(tokens), loaded.eval()(tokens))
    optimizer = build_optimizer(loaded, settings)
    no_decay = {id(p) for group in optimizer.param_groups if group["weight_decay"] == 0 for p in group["params"]}
    assert id(loaded.layers[0].mixer.decay_logit) in no_decay
    assert id(loaded.layers[0].mixer.in_proj.weight) not in no_decay


def test_cli_analyze_and_inspect_ask_its_hooks(capsys):
    assert main(["analyze", "YF YF", "--seq-len", "64", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    report = report[0] if isinstance(report, list) else report
    assert report["cache"]["state_bytes"] == 2 * report["d_model"] * 4  # two layers of d fp32 values
    assert main(["inspect", "YF YF", "--mixing", "--seq-len", "8", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["kind"] for row in rows] == ["ema", "ema"]
    assert main(["inspect", "YF", "--memory-length", "--seq-len", "8", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["kind"] == "ema" and row["count"] == report["d_model"]


def test_layer_mixing_finds_the_registered_mixer():
    model = HybridLM(tiny_config(pattern="YF AF")).eval()
    kinds = [mixing.kind for mixing in layer_mixing(model, torch.randint(0, 50, (1, 10)))]
    assert kinds == ["ema", "attention"]


def test_a_missing_hook_is_an_error_naming_it_never_a_zero():
    """In a fresh process (the registry is global): a family without `flops` and `cache_bytes`."""
    script = textwrap.dedent(
        """
        import torch, hybridlm
        from hybridlm.analysis.cache_size import cache_bytes
        from hybridlm.analysis.flops import model_flops
        from hybridlm.errors import MissingHookError

        class Bare(hybridlm.layers.Mixer):
            chars = {"Z": "bare"}

            @classmethod
            def from_config(cls, config, char, ordinal=0):
                return cls()

            def allocate_state(self, batch_size, max_len, device, dtype):
                return None

            def forward(self, x, state, ctx):
                return x

        hybridlm.register_mixer(Bare)
        config = hybridlm.ModelConfig(pattern="Z F", d_model=32, n_heads=4)
        print(hybridlm.HybridLM(config)(torch.zeros(1, 3, dtype=torch.long)).shape)
        for function in (model_flops, cache_bytes):
            try:
                function(config, 8)
            except MissingHookError as error:
                print(error)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "torch.Size([1, 3, 256])"
    assert "Bare (Z) does not implement the hook 'flops'" in lines[1]
    assert "Bare (Z) does not implement the hook 'cache_bytes'" in lines[2]
