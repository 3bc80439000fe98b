"""The whole-step decode program (ops/decode_program.py): one numba call per token gives the logits of
the sub-layer-by-sub-layer path, and stands aside, or is rebuilt, whenever what it views changes."""

import pytest
import torch

from hybridlm import HybridLM, ModelConfig
from hybridlm.ops import decode_program
from hybridlm.ops.dispatch import kernels

from .decoding import decode_one_at_a_time, perturbed

pytest.importorskip("numba")

TOLERANCE = 2e-5
PROGRAM_PRESETS = ("mamba", "mamba2", "jamba", "transformer", "zamba", "zamba2", "blend")  # all with steps


@pytest.fixture
def runs(monkeypatch):
    """How many tokens the program decoded (calls of its one kernel)."""
    count = [0]
    real = decode_program._run

    def counting(*args):
        count[0] += 1
        return real(*args)

    monkeypatch.setattr(decode_program, "_run", counting)
    return count


def _by_sublayer(model, tokens, **kwargs):
    """The same decode with the program turned off: every sub-layer's fused kernel in its own call."""
    real = decode_program.decode_logits
    decode_program.decode_logits = lambda *args: None
    try:
        return decode_one_at_a_time(model, tokens, **kwargs)
    finally:
        decode_program.decode_logits = real


def _reference(model, tokens, **kwargs):
    with kernels("reference"):
        return decode_one_at_a_time(model, tokens, **kwargs)


@pytest.mark.parametrize("name", PROGRAM_PRESETS)
@pytest.mark.parametrize("batch", [1, 2])
def test_program_equals_the_sublayer_path_and_the_reference(name, batch, runs):
    torch.manual_seed(0)
    model = perturbed(HybridLM(ModelConfig.from_preset(name, "tiny")).eval())
    tokens = torch.randint(0, 258, (batch, 10))
    program = decode_one_at_a_time(model, tokens)
    assert runs[0] == tokens.shape[1] - 3  # every decoded token, the prompt not
    assert (program - _by_sublayer(model, tokens)).abs().max() <= 1e-6  # the same kernels, in one call
    assert (program - _reference(model, tokens)).abs().max() <= TOLERANCE


@pytest.mark.parametrize("name", ["griffin", "hawk", "stripedhyena"])
@pytest.mark.parametrize("batch", [1, 2])
def test_rglru_and_hyena_blocks_in_the_program(name, batch, runs):
    """The RG-LRU and Hyena blocks' steps run their linears on decode_cpu's GEMV, which sums in another
    order than the sub-layer path's: equal to the reference within the tolerance; a row's first token
    resets the RG-LRU."""
    torch.manual_seed(8)
    model = perturbed(HybridLM(ModelConfig.from_preset(name, "tiny")).eval())
    tokens = torch.randint(0, 258, (batch, 10))
    program = decode_one_at_a_time(model, tokens, prompt=1)
    assert runs[0] == 10  # a one-token prompt too: the program's first token resets the recurrence
    assert (program - _reference(model, tokens, prompt=1)).abs().max() <= TOLERANCE
    assert (program - _by_sublayer(model, tokens, prompt=1)).abs().max() <= TOLERANCE


def test_a_growing_kv_cache_rebuilds_the_program(runs):
    """Without max_len the KV caches start small and are reallocated as they fill: the program's views
    of them are then stale, so it is built again, never writing into the freed buffers."""
    torch.manual_seed(2)
    model = perturbed(HybridLM(ModelConfig.from_preset("transformer", "tiny")).eval())
    tokens = torch.randint(0, 258, (2, 40))
    grown = decode_one_at_a_time(model, tokens, max_len=None)
    assert runs[0] == 37
    assert (grown - _reference(model, tokens)).abs().max() <= TOLERANCE


def test_a_window_ring_filling_then_wrapping(runs):
    torch.manual_seed(3)
    config = ModelConfig.from_preset("samba", "tiny", attention={"window": 6})
    model = perturbed(HybridLM(config).eval())
    tokens = torch.randint(0, 258, (1, 14))
    logits = decode_one_at_a_time(model, tokens, max_len=None)
    assert runs[0] == 14 - 3  # the ring of window - 1 = 5 slots fills, then wraps around
    assert (logits - _reference(model, tokens, max_len=None)).abs().max() <= TOLERANCE


def test_rows_reordered_between_tokens(runs):
    """Cache.select (beam search) replaces every state tensor: the program is rebuilt on the new ones."""
    torch.manual_seed(4)
    model = perturbed(HybridLM(ModelConfig.from_preset("jamba", "tiny")).eval())
    tokens = torch.randint(0, 258, (2, 9))

    def decode(choice):
        with kernels(choice), torch.inference_mode():
            cache = model.allocate_cache(2, max_len=9)
            model(tokens[:, :3], cache=cache)
            first = model(tokens[:, 3:4], cache=cache)
            cache.select([1, 0])
            rest = [model(tokens[[1, 0], t : t + 1], cache=cache) for t in range(4, 9)]
            return torch.cat([first, *rest], 1)

    assert (decode("") - decode("reference")).abs().max() <= TOLERANCE
    assert runs[0] == 6


def test_moe_routing_of_a_program_token_is_recorded(runs):
    torch.manual_seed(5)
    model = perturbed(HybridLM(ModelConfig.from_preset("jamba", "tiny")).eval())
    tokens = torch.randint(0, 258, (1, 6))
    moes = [layer.mixer for layer in model.layers if layer.char == "E"]
    decode_one_at_a_time(model, tokens)
    program_routing = [(moe._routing[0].clone(), moe._routing[1].clone()) for moe in moes]
    _by_sublayer(model, tokens)
    assert runs[0] == 3
    for moe, (probs, chosen) in zip(moes, program_routing):
        torch.testing.assert_close(probs, moe._routing[0], rtol=0, atol=1e-7)
        assert torch.equal(chosen, moe._routing[1])


def test_the_program_stands_aside_for_hooks_grad_and_padding(runs):
    torch.manual_seed(6)
    model = HybridLM(ModelConfig.from_preset("mamba", "tiny")).eval()
    tokens = torch.randint(0, 258, (1, 6))
    seen = []
    handle = model.final_norm.register_forward_hook(lambda *_: seen.append(1))
    hooked = decode_one_at_a_time(model, tokens)
    handle.remove()
    assert runs[0] == 0 and len(seen) == 4  # prompt and 3 tokens, all through the hooked norm
    assert (hooked - decode_one_at_a_time(model, tokens)).abs().max() <= 1e-6
    assert runs[0] == 3
    cache = model.allocate_cache(1, max_len=8)
    with torch.no_grad():
        model(tokens[:, :3], cache=cache)
        model(tokens[:, 3:4], cache=cache, attention_mask=torch.zeros(1, 1))  # a padding token
    assert runs[0] == 3
    assert model(tokens[:, 4:5], cache=cache).requires_grad  # grad enabled: the eager, differentiable path
    assert runs[0] == 3


def test_a_hook_registered_between_tokens_takes_the_next_token_off_the_program(runs):
    """The unhooked tree is remembered between tokens: a hook made later, deep inside, must still be seen."""
    torch.manual_seed(6)
    model = HybridLM(ModelConfig.from_preset("jamba", "tiny")).eval()
    tokens = torch.randint(0, 258, (1, 6))
    seen = []
    with torch.inference_mode():
        cache = model.allocate_cache(1, max_len=8)
        model(tokens[:, :3], cache=cache)
        model(tokens[:, 3:4], cache=cache)
        assert runs[0] == 1
        handle = model.layers[3].mixer.experts[0].up_proj.register_forward_pre_hook(lambda *_: seen.append(1))
        model(tokens[:, 4:5], cache=cache)
        assert runs[0] == 1  # the per-sub-layer path ran, where the hook can fire
        handle.remove()
        model(tokens[:, 5:6], cache=cache)
        assert runs[0] == 2


def test_steps_of_one_kind_whose_views_differ_in_type_leave_the_model_to_the_sublayer_path(runs, monkeypatch):
    torch.manual_seed(7)
    model = HybridLM(ModelConfig.from_preset("mamba", "tiny")).eval()
    mixer = model.layers[1].mixer
    real_step = mixer.decode_program_step

    def float64_norm(*args):
        step = real_step(*args)
        return decode_program.ProgramStep(step.kind, (step.args[0].astype("float64"), *step.args[1:]), step.weights)

    monkeypatch.setattr(mixer, "decode_program_step", float64_norm)
    tokens = torch.randint(0, 258, (1, 6))
    with torch.inference_mode():
        assert decode_program.build_program(model, model.allocate_cache(1, max_len=6)) is None
    assert (decode_one_at_a_time(model, tokens) - _reference(model, tokens)).abs().max() <= TOLERANCE
    assert runs[0] == 0
