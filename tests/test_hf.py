"""Hugging Face interop against transformers itself (pinned in constraints.txt): tiny random models
built offline, imported, generated from, exported back, and the refusals of bad inputs."""

import json
from pathlib import Path

import pytest
import torch

import hybridlm
from hybridlm import HybridLM, ModelConfig
from hybridlm.cli import main
from hybridlm.config import ConfigError
from hybridlm.hf import save_hf
from hybridlm.hf.common import compact_pattern

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()

VOCAB = 99
# Odd widths, GQA where the family allows it, several chunks, a window shorter than the sequence,
# two shared blocks cycled over three hybrid layers.
CASES = {  # name -> (transformers config class, its arguments besides vocab_size)
    "mamba": ("MambaConfig", dict(hidden_size=40, state_size=8, num_hidden_layers=2)),
    "mamba2": ("Mamba2Config", dict(
        hidden_size=48, num_heads=12, head_dim=8, n_groups=3, state_size=8, num_hidden_layers=2, chunk_size=16,
        time_step_limit=(0.0, 0.05),
    )),
    "jamba": ("JambaConfig", dict(
        hidden_size=48, intermediate_size=72, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        num_experts=4, num_experts_per_tok=2, attn_layer_period=4, attn_layer_offset=2, mamba_d_state=8,
    )),
    "bamba": ("BambaConfig", dict(
        hidden_size=48, intermediate_size=72, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        attn_layer_indices=[1], mamba_n_heads=12, mamba_d_head=8, mamba_n_groups=2, mamba_d_state=8,
        mamba_chunk_size=16,
    )),
    "zamba": ("ZambaConfig", dict(
        hidden_size=48, intermediate_size=72, num_attention_heads=4, num_key_value_heads=2, n_mamba_heads=2,
        mamba_d_state=8, num_hidden_layers=6,
        layers_block_type=["mamba", "hybrid", "mamba", "mamba", "hybrid", "mamba"],
    )),
    "zamba2": ("Zamba2Config", dict(
        hidden_size=48, intermediate_size=72, num_attention_heads=4, n_mamba_heads=4, mamba_d_state=8,
        mamba_ngroups=2, chunk_size=16, num_mem_blocks=2, use_shared_attention_adapter=True, adapter_rank=4,
        use_mem_rope=True, num_hidden_layers=6,
        layers_block_type=["mamba", "hybrid", "mamba", "hybrid", "hybrid", "mamba"],
    )),
    "zamba2-gqa": ("Zamba2Config", dict(
        hidden_size=48, intermediate_size=72, num_attention_heads=4, num_key_value_heads=2, n_mamba_heads=4,
        mamba_d_state=8, chunk_size=16, adapter_rank=4, num_hidden_layers=4,
        layers_block_type=["mamba", "hybrid", "hybrid", "mamba"],
    )),
    "griffin": ("RecurrentGemmaConfig", dict(
        hidden_size=48, intermediate_size=80, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        lru_width=56, attention_window_size=7, block_types=["recurrent", "recurrent", "attention"],
    )),
    "hawk": ("RecurrentGemmaConfig", dict(
        hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4, block_types=["recurrent"],
    )),
    # Issue 9 item 6, each imported wrong or not at all before: an odd rotary width
    # (int(head_dim * partial_rotary_factor) = 5 or 3: transformers rotates 6 or 4 features at theta^(-2i/5) or /3),
    "griffin-odd-rotary": ("RecurrentGemmaConfig", dict(
        hidden_size=40, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
        block_types=["recurrent", "attention"],
    )),
    "griffin-quarter-rotary": ("RecurrentGemmaConfig", dict(
        hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
        block_types=["recurrent", "attention"],
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
    )),
    "bamba-odd-rotary": ("BambaConfig", dict(
        hidden_size=48, intermediate_size=72, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        head_dim=10, attn_layer_indices=[1], mamba_n_heads=12, mamba_d_head=8, mamba_n_groups=2, mamba_d_state=8,
        mamba_chunk_size=16,
    )),
    # an explicit head_dim != hidden / heads, hidden not a multiple of heads,
    "griffin-head-dim": ("RecurrentGemmaConfig", dict(
        hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4, head_dim=16,
        block_types=["recurrent", "attention"],
    )),
    "jamba-uneven-heads": ("JambaConfig", dict(
        hidden_size=18, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        num_experts=1, attn_layer_period=2, attn_layer_offset=1, mamba_d_state=4,
    )),
    # untied embeddings, where transformers gives every hybrid layer its own copy of the shared block.
    "zamba-untied": ("ZambaConfig", dict(
        hidden_size=48, intermediate_size=72, num_attention_heads=4, num_key_value_heads=2, n_mamba_heads=2,
        mamba_d_state=8, num_hidden_layers=6, tie_word_embeddings=False,
        layers_block_type=["mamba", "hybrid", "mamba", "mamba", "hybrid", "mamba"],
    )),
    "zamba2-untied": ("Zamba2Config", dict(
        hidden_size=48, intermediate_size=72, num_attention_heads=4, n_mamba_heads=4, mamba_d_state=8,
        mamba_ngroups=2, chunk_size=16, num_mem_blocks=2, use_shared_attention_adapter=True, adapter_rank=4,
        use_mem_rope=True, num_hidden_layers=6, tie_word_embeddings=False,
        layers_block_type=["mamba", "hybrid", "mamba", "hybrid", "hybrid", "mamba"],
    )),
}  # fmt: skip
EXPECTED_PATTERNS = {
    "mamba": "M M",
    "mamba2": "D D",
    "jamba": "MF ME AF ME",
    "bamba": "DF AF DF",
    "zamba": "(M SM M)*2",
    "zamba2": "(D SD)*2 SD D",
    "zamba2-gqa": "D SD SD D",
    "griffin": "RF RF LF RF",
    "hawk": "RF RF",
    "griffin-odd-rotary": "RF LF RF",
    "griffin-quarter-rotary": "RF LF RF",
    "bamba-odd-rotary": "DF AF DF",
    "griffin-head-dim": "RF LF RF",
    "jamba-uneven-heads": "MF AF",
    "zamba-untied": "(M SM M)*2",
    "zamba2-untied": "(D SD)*2 SD D",
}


def hf_logits(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> (transformers model, its saved directory, our import of it); built once, on first use."""
    built = {}

    def get(name):
        if name not in built:
            torch.manual_seed(0)
            config_class, arguments = CASES[name]
            config = getattr(transformers, config_class)(vocab_size=VOCAB, **arguments)
            model = transformers.AutoModelForCausalLM.from_config(config).eval()
            with torch.no_grad():  # move norms, biases, A and D off their initial values so layouts matter
                for param_name, param in model.named_parameters():
                    if any(key in param_name for key in ("norm", "bias", "A_log", ".D", "recurrent_param")):
                        param.add_(0.1 * torch.randn_like(param))
            directory = tmp_path_factory.mktemp(name)
            model.save_pretrained(directory)
            built[name] = (model, directory, hybridlm.load_hf(directory).eval())
        return built[name]

    return get


@pytest.mark.parametrize("name", CASES)
def test_import_matches_transformers_logits(checkpoints, name):
    reference, _, model = checkpoints(name)
    ids = torch.randint(0, VOCAB, (2, 24))
    with torch.no_grad():
        diff = (model(ids) - hf_logits(reference, ids)).abs().max().item()
    assert diff <= 1e-4, f"{name}: max |logit diff| {diff:.2e}"
    assert model.config.pattern == EXPECTED_PATTERNS[name]


@pytest.mark.parametrize("name", CASES)
def test_greedy_generation_matches_transformers(checkpoints, name):
    """32 greedy tokens decoded with our cache are, one by one, the argmax of transformers' full
    forward over the same prefix: so transformers' greedy decoding of the prompt gives them too."""
    reference, _, model = checkpoints(name)
    prompt = torch.randint(0, VOCAB, (1, 8))
    generated = model.generate(prompt, 32, temperature=0)
    assert generated.shape == (1, 40)
    theirs = hf_logits(reference, generated[:, :-1])[:, 7:].argmax(-1)
    assert torch.equal(theirs, generated[:, 8:])


@pytest.mark.parametrize("name", CASES)
def test_export_reloads_in_transformers_with_the_same_logits(checkpoints, tmp_path, name):
    reference, _, model = checkpoints(name)
    save_hf(model, tmp_path / "export")
    written = json.loads((tmp_path / "export" / "config.json").read_text())
    assert written["model_type"] == reference.config.model_type
    reloaded, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]  # nothing "newly initialized"
    ids = torch.randint(0, VOCAB, (2, 24))
    assert (hf_logits(reloaded.eval(), ids) - hf_logits(reference, ids)).abs().max().item() <= 1e-6
    with torch.no_grad():
        assert (hf_logits(reloaded, ids) - model(ids)).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", CASES)
def test_chunked_prefill_equals_full_forward(checkpoints, name):
    """Our cache continues any number of tokens (transformers' own multi-token continuation is
    wrong for Mamba-1, Jamba, Zamba and RecurrentGemma, see docs/hf.md)."""
    model = checkpoints(name)[2]
    ids = torch.randint(0, VOCAB, (2, 24))
    cache = model.allocate_cache(2)
    with torch.no_grad():
        full = model(ids)
        chunks = torch.cat([model(chunk, cache=cache) for chunk in ids.split([9, 1, 6, 8], dim=1)], dim=1)
    assert (chunks - full).abs().max().item() <= 1e-4


def test_sharded_checkpoint_imports_like_a_single_file(checkpoints, tmp_path):
    reference, directory, _ = checkpoints("jamba")
    reference.save_pretrained(tmp_path, max_shard_size="50KB")
    assert (tmp_path / "model.safetensors.index.json").exists() and not (tmp_path / "model.safetensors").exists()
    single, sharded = hybridlm.load_hf(directory), hybridlm.load_hf(tmp_path)
    for (name, ours), theirs in zip(single.state_dict().items(), sharded.state_dict().values()):
        assert torch.equal(ours, theirs), name


@pytest.mark.parametrize(
    "preset, family",
    [("zamba2", "zamba2"), ("griffin", "recurrent_gemma"), ("mamba", "mamba"), ("jamba", "jamba")],
)
def test_our_presets_export_to_their_family(tmp_path, preset, family):
    model = HybridLM(ModelConfig.from_preset(preset, "tiny")).eval()
    save_hf(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == family
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 20))
    with torch.no_grad():
        assert (hf_logits(reloaded, ids) - model(ids)).abs().max().item() <= 1e-4


def test_convert_carries_the_tokenizer_both_ways(checkpoints, tmp_path):
    from hybridlm.data.tokenizer import train_bpe

    _, directory, _ = checkpoints("mamba")
    hf_copy = tmp_path / "hf"
    hf_copy.mkdir()
    for file in directory.iterdir():
        (hf_copy / file.name).write_bytes(file.read_bytes())
    train_bpe(["a tiny corpus for a tiny tokenizer"] * 5, vocab_size=270, eos_token="</s>").save(hf_copy)
    assert main(["convert", str(hf_copy), str(tmp_path / "ours")]) == 0
    tokenizer = hybridlm.load_tokenizer(tmp_path / "ours")
    assert tokenizer.eos_id is not None and tokenizer.decode(tokenizer.encode("a tiny corpus")) == "a tiny corpus"
    assert main(["convert", str(tmp_path / "ours"), str(tmp_path / "back"), "--to-hf"]) == 0
    assert (tmp_path / "back" / "tokenizer.json").read_bytes() == (hf_copy / "tokenizer.json").read_bytes()


def test_convert_cli_imports_and_exports(checkpoints, tmp_path, capsys):
    reference, directory, _ = checkpoints("zamba")
    assert main(["convert", str(directory), str(tmp_path / "ours")]) == 0
    assert main(["convert", str(tmp_path / "ours"), str(tmp_path / "back"), "--to-hf"]) == 0
    assert "(M SM M)*2" in capsys.readouterr().out
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    ids = torch.randint(0, VOCAB, (1, 16))
    assert (hf_logits(reloaded, ids) - hf_logits(reference, ids)).abs().max().item() <= 1e-6


def test_convert_refuses_a_training_run_and_names_what_it_would_replace(checkpoints, tmp_path, capsys):
    _, directory, _ = checkpoints("mamba")
    run = tmp_path / "run"
    task = ["--task", "mqar", "--task-set", "seq_len=16", "--task-set", "n_pairs=2", "--batch-size", "2"]
    assert main(["train", "M", "--size", "tiny", *task, "--steps", "1", "--out", str(run)]) == 0
    before = sorted(p.name for p in run.iterdir())
    for extra in ([], ["--overwrite"]):  # its metrics and optimizer state are not convert's to replace
        assert main(["convert", str(directory), str(run), *extra]) == 2
        refusal = "holds a training run, which convert does not replace: choose another destination"
        assert refusal in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == before
    assert main(["convert", str(run), str(tmp_path / "hf"), "--to-hf"]) == 0
    assert main(["convert", str(run), str(tmp_path / "hf"), "--to-hf"]) == 2
    assert "already holds an export; pass --overwrite" in capsys.readouterr().err


def _broken(kind: str, source: Path, target: Path) -> list[str]:
    """A command line that must fail, after preparing `target` from the good checkpoint `source`."""
    if kind == "missing directory":
        return ["convert", str(target / "nowhere"), str(target / "out")]
    target.mkdir()
    config = json.loads((source / "config.json").read_text())
    weights = (source / "model.safetensors").read_bytes()
    if kind == "unsupported model_type":
        config["model_type"] = "llama"
    elif kind == "unsupported option":
        config["hidden_act"] = "tanh"
    elif kind == "shape mismatch":
        config["conv_kernel"] = 3
    elif kind == "unaccounted tensors":
        config["num_hidden_layers"] = 1
    if kind == "pickle only":
        (target / "pytorch_model.bin").write_bytes(b"not unpickled")
    elif kind == "missing shard":
        index = {"weight_map": {"backbone.embeddings.weight": "model-00002-of-00002.safetensors"}}
        (target / "model.safetensors.index.json").write_text(json.dumps(index))
    elif kind != "missing config":
        (target / "model.safetensors").write_bytes(weights[: len(weights) // 2] if kind == "truncated" else weights)
    if kind != "missing config":
        (target / "config.json").write_text(json.dumps(config))
    if kind == "not exportable":
        hybridlm.save(HybridLM(ModelConfig(pattern="HF", d_model=32, n_heads=4)), target / "hyena")
        return ["convert", str(target / "hyena"), str(target / "out"), "--to-hf"]
    if kind == "wrong family":
        hybridlm.save(hybridlm.load_hf(target), target / "ours")
        return ["convert", str(target / "ours"), str(target / "out"), "--to-hf", "--model-type", "jamba"]
    return ["convert", str(target), str(target.parent / "out")]


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing directory", "no such checkpoint directory"),
        ("missing config", "missing config.json"),
        ("unsupported model_type", "model_type 'llama' is not supported"),
        ("unsupported option", "hidden_act='tanh' is not supported"),
        ("pickle only", "does not unpickle"),
        ("truncated", "corrupt or truncated"),
        ("missing shard", "missing weight file model-00002-of-00002.safetensors"),
        (
            "shape mismatch",
            "shape mismatch for backbone.layers.0.mixer.conv1d.weight: file (80, 1, 4), config.json implies (80, 1, 3)",
        ),
        ("unaccounted tensors", "tensors config.json does not account for: backbone.layers.1.mixer.A_log"),
        ("not exportable", "no Hugging Face family can hold pattern 'HF'"),
        ("wrong family", "cannot export as jamba"),
    ],
)
def test_convert_errors_are_one_line_with_exit_2(checkpoints, tmp_path, capsys, kind, message):
    argv = _broken(kind, checkpoints("mamba")[1], tmp_path / "case")
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "name, change, message",
    [
        ("zamba", {"num_attention_heads": 5}, "zamba: num_attention_heads=5 must divide 2 * hidden_size = 96"),
        ("zamba2", {"num_attention_heads": 5}, "zamba2: num_attention_heads=5 must divide 2 * hidden_size = 96"),
        ("griffin", {"lru_width": 50}, "recurrent_gemma: lru_width=50 must be a multiple of num_attention_heads=4"),
        (
            "griffin",
            {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.05}},
            "recurrent_gemma: partial_rotary_factor=0.05 with head_dim 12 rotates 0 features",
        ),
    ],
)
def test_configs_hybridlm_cannot_match_are_refused_naming_the_field(checkpoints, tmp_path, name, change, message):
    directory = checkpoints(name)[1]
    for file in directory.iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    config = json.loads((directory / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ConfigError) as refusal:
        hybridlm.load_hf(tmp_path)
    assert message in str(refusal.value) and "\n" not in str(refusal.value)


@pytest.mark.parametrize("name", ["bamba", "griffin"])
def test_legacy_top_level_rope_fields_import_as_transformers_reads_them(checkpoints, tmp_path, name):
    """A config.json with top-level rope_theta / partial_rotary_factor: RecurrentGemma honours the
    fraction, Bamba overwrites it with its hard-coded 0.5; the import follows each."""
    directory = checkpoints(name)[1]
    for file in directory.iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    config = json.loads((directory / "config.json").read_text())
    del config["rope_parameters"]
    (tmp_path / "config.json").write_text(json.dumps({**config, "rope_theta": 300.0, "partial_rotary_factor": 0.75}))
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, VOCAB, (2, 24))
    with torch.no_grad():
        assert (hybridlm.load_hf(tmp_path)(ids) - hf_logits(reference, ids)).abs().max().item() <= 1e-4


def test_untied_zamba_export_needs_a_block_per_hybrid_layer(tmp_path):
    """Untied, transformers gives each hybrid layer its own shared block: one block for two is refused."""
    config = ModelConfig(pattern="M SM M SM", d_model=32, n_heads=4, tie_embeddings=False, shared={"n_blocks": 1})
    with pytest.raises(ConfigError, match="needs shared.n_blocks=2, not 1"):
        save_hf(HybridLM(config), tmp_path / "out", model_type="zamba")
    assert not (tmp_path / "out").exists()


def test_compact_pattern_finds_the_repeat():
    assert compact_pattern(["M"] * 4) == "(M)*4"
    assert compact_pattern(["RF", "RF", "LF"] * 8 + ["RF", "RF"]) == "(RF RF LF)*8 RF RF"
    assert compact_pattern(["MF", "ME", "AF"]) == "MF ME AF"
