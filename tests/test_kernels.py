"""Fused kernels against their plain PyTorch references: outputs, final states and every gradient."""

import pytest
import torch
import torch.nn.functional as F

from hybridlm import ConfigError, HybridLM
from hybridlm.ops import cuda_kernels, dispatch
from hybridlm.ops.causal_conv import causal_conv1d_ref
from hybridlm.ops.causal_conv_cpu import CausalConv1dFunction
from hybridlm.ops.fftconv import modal_recurrence_ref
from hybridlm.ops.linear_scan import rglru_scan_ref
from hybridlm.ops.linear_scan_cpu import RGLRUScanFunction
from hybridlm.ops.modal_cpu import ModalRecurrenceFunction
from hybridlm.ops.selective_scan import selective_scan_ref
from hybridlm.ops.selective_scan_cpu import SelectiveScanFunction

from .helpers import tiny_config

RELATIVE = 1e-4


def assert_close(actual, expected, name=""):
    scale = expected.abs().max().clamp_min(1e-6)
    error = (actual - expected).abs().max() / scale
    assert error <= RELATIVE, f"{name}: relative error {error:.2e}"


def outputs_and_grads(fn, inputs):
    """Run fn on fresh leaves and backpropagate a fixed, uneven weighting of all its outputs."""
    leaves = [t.clone().requires_grad_(t.is_floating_point() or t.is_complex()) for t in inputs]
    outputs = fn(*leaves)
    loss = sum((torch.view_as_real(o) if o.is_complex() else o).float().mul(_weights(o)).sum() for o in outputs)
    loss.backward()
    return [o.detach() for o in outputs], [leaf.grad for leaf in leaves if leaf.requires_grad]


def _weights(t):
    shape = torch.view_as_real(t).shape if t.is_complex() else t.shape
    return torch.linspace(-1.0, 2.0, shape.numel()).view(shape)


def assert_kernel_matches(kernel, reference, inputs):
    kernel_out, kernel_grads = outputs_and_grads(kernel, inputs)
    reference_out, reference_grads = outputs_and_grads(reference, inputs)
    for index, (actual, expected) in enumerate(zip(kernel_out, reference_out)):
        assert_close(actual, expected, f"output {index}")
    assert len(kernel_grads) == len(reference_grads)
    for index, (actual, expected) in enumerate(zip(kernel_grads, reference_grads)):
        assert actual is not None and expected is not None, f"gradient {index} missing"
        assert_close(actual, expected, f"gradient of input {index}")


# ---- Mamba-1 selective scan ------------------------------------------------------------------------
def selective_scan_inputs(batch, length, channels, d_state, groups=1):
    return [
        torch.randn(batch, length, channels),
        F.softplus(torch.randn(batch, length, channels) - 1),  # dt
        -torch.rand(channels, d_state) * 8 - 0.1,  # A
        torch.randn(batch, length, groups, d_state),
        torch.randn(batch, length, groups, d_state),
        torch.randn(channels),  # D
        torch.randn(batch, length, channels),  # z
        torch.randn(batch, channels, d_state),  # initial state
    ]


def gated_selective_scan_ref(x, dt, A, B, C, D, z, initial_state):
    y, final_state = selective_scan_ref(x, dt, A, B, C, D, initial_state)
    return y * F.silu(z), final_state


@pytest.mark.parametrize(
    "batch, length, channels, d_state, groups",
    [(2, 100, 8, 4, 2), (1, 1, 3, 1, 1), (1, 130, 16, 1, 1), (2, 64, 6, 16, 3), (1, 200, 160, 16, 1)],
)
def test_selective_scan_kernel_matches_reference(batch, length, channels, d_state, groups):
    inputs = selective_scan_inputs(batch, length, channels, d_state, groups)
    assert_kernel_matches(SelectiveScanFunction.apply, gated_selective_scan_ref, inputs)


def test_selective_scan_kernel_without_gate_and_long_sequence():
    inputs = selective_scan_inputs(1, 8200, 4, 2)
    inputs[1] = inputs[1] * 0.05  # slow decay, so the start still matters at the end
    no_gate = torch.empty(0, 0, 0)

    def kernel(x, dt, A, B, C, D, initial_state):
        return SelectiveScanFunction.apply(x, dt, A, B, C, D, no_gate, initial_state)

    assert_kernel_matches(kernel, selective_scan_ref, inputs[:6] + inputs[7:])


# ---- RG-LRU ----------------------------------------------------------------------------------------
def rglru_inputs(batch, length, channels):
    reset = torch.rand(batch, length) < 0.05
    reset[0, 0] = True
    return [
        torch.randn(batch, length, channels),
        torch.rand(batch, length, channels),  # input gate
        torch.rand(batch, length, channels),  # recurrence gate
        -8 * F.softplus(torch.randn(channels) - 4),  # log_a_scale, a^c in the Griffin init range
        reset,
        torch.randn(batch, channels),
    ]


@pytest.mark.parametrize("batch, length, channels", [(2, 100, 7), (1, 1, 3), (2, 70, 300), (1, 8192, 3)])
def test_rglru_kernel_matches_reference(batch, length, channels):
    assert_kernel_matches(RGLRUScanFunction.apply, rglru_scan_ref, rglru_inputs(batch, length, channels))


# ---- Hyena modal recurrence ------------------------------------------------------------------------
def modal_inputs(batch, length, channels, modes):
    return [
        torch.randn(batch, length, channels),
        torch.exp(torch.complex(-torch.rand(channels, modes) * 0.5 - 1e-3, torch.rand(channels, modes) * 3)),
        torch.complex(torch.randn(channels, modes), torch.randn(channels, modes)),
        torch.complex(torch.randn(batch, channels, modes), torch.randn(batch, channels, modes)),
    ]


@pytest.mark.parametrize("batch, length, channels, modes", [(2, 100, 7, 3), (1, 1, 3, 1), (1, 8192, 2, 2)])
def test_modal_kernel_matches_reference(batch, length, channels, modes):
    inputs = modal_inputs(batch, length, channels, modes)
    assert_kernel_matches(ModalRecurrenceFunction.apply, modal_recurrence_ref, inputs)


# ---- causal conv -----------------------------------------------------------------------------------
@pytest.mark.parametrize("length, silu, with_state", [(37, True, True), (1, False, True), (300, True, False)])
def test_causal_conv_kernel_matches_reference(length, silu, with_state):
    channels, width = 260, 4
    inputs = [torch.randn(2, length, channels), torch.randn(channels, 1, width), torch.randn(channels)]
    state = torch.randn(2, channels, width - 1) if with_state else None
    inputs = inputs + ([state] if with_state else [])

    def kernel(x, weight, bias, *state):
        return (CausalConv1dFunction.apply(x, weight, bias, state[0] if state else None, silu),)

    def reference(x, weight, bias, *state):
        return (causal_conv1d_ref(x, weight, bias, state[0] if state else None, silu),)

    assert_kernel_matches(kernel, reference, inputs)


# ---- dispatch ---------------------------------------------------------------------------------------
@pytest.fixture
def kernels_env(monkeypatch):
    """Set HYBRIDLM_KERNELS for one test; the choice is re-read before and after."""

    def select(value):
        monkeypatch.setenv(dispatch.ENV_VAR, value)
        dispatch.kernel_choice.cache_clear()

    yield select
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    dispatch.kernel_choice.cache_clear()


def test_dispatch_env_var_overrides_the_choice(kernels_env):
    cpu_tensor = torch.zeros(1)
    kernels_env("reference")
    assert dispatch.backend_for(cpu_tensor) == "reference"
    kernels_env("cpu")
    assert dispatch.backend_for(cpu_tensor) == "numba"
    assert dispatch.backend_for(cpu_tensor.double()) == "reference"
    kernels_env("")
    assert dispatch.backend_for(cpu_tensor) == "numba"


def test_dispatch_rejects_unknown_or_unavailable_kernels(kernels_env):
    kernels_env("fastest")
    with pytest.raises(ConfigError, match="HYBRIDLM_KERNELS"):
        dispatch.kernel_choice()
    if not cuda_kernels.available():
        kernels_env("cuda")
        with pytest.raises(ConfigError, match="mamba_ssm"):
            dispatch.kernel_choice()


@pytest.mark.parametrize("pattern", ["M D", "R H"])
def test_model_gradients_equal_with_and_without_kernels(kernels_env, pattern):
    model = HybridLM(tiny_config(pattern=pattern, mamba={"n_heads": 2}))
    tokens = torch.randint(0, 50, (2, 70))
    results = []
    for choice in ("reference", "cpu"):
        kernels_env(choice)
        model.zero_grad()
        logits = model(tokens)
        logits.pow(2).mean().backward()
        results.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (ref_logits, ref_grads), (logits, grads) = results
    assert_close(logits, ref_logits, "logits")
    for name, grad in grads.items():
        assert_close(grad, ref_grads[name], name)


def test_decoding_updates_the_cache_in_place():
    model = HybridLM(tiny_config(pattern="M D R H")).eval()
    cache = model.allocate_cache(2)
    addresses = [[t.data_ptr() for t in state.parts()] for state in cache.states]
    with torch.no_grad():
        model(torch.randint(0, 50, (2, 9)), cache=cache)
        for _ in range(3):
            model(torch.randint(0, 50, (2, 1)), cache=cache)
    assert [[t.data_ptr() for t in state.parts()] for state in cache.states] == addresses


def test_fused_mamba_decode_step_is_used_and_follows_weight_updates():
    from hybridlm.ops import decode_cpu, numba_support

    model = HybridLM(tiny_config(pattern="M M", mamba={"n_heads": 2, "inner_norms": True})).eval()
    tokens = torch.randint(0, 50, (2, 8))

    def stepwise():
        cache = model.allocate_cache(2)
        return torch.cat([model(tokens[:, t : t + 1], cache=cache) for t in range(tokens.shape[1])], 1)

    with torch.no_grad():
        stepwise()
        mixer = model.layers[0].mixer  # the mixer's fused step, or the whole sub-layer's (ops/decode_cpu.py)
        assert id(mixer.x_proj_weight) in numba_support._STEP_ARRAYS or mixer in decode_cpu._CACHE
        for parameter in model.parameters():  # in place, as an optimizer step would
            parameter.mul_(1.1)
        assert_close(stepwise(), model(tokens), "decoding after a weight update")


@pytest.mark.skipif(not (torch.cuda.is_available() and cuda_kernels.available()), reason="needs a GPU and mamba_ssm")
def test_cuda_selective_scan_matches_reference():
    inputs = [t.cuda() for t in selective_scan_inputs(2, 300, 64, 16)]
    out, final_state = cuda_kernels.selective_scan(*inputs[:7], None)
    reference_out, reference_state = gated_selective_scan_ref(*inputs[:7], None)
    assert_close(out.float(), reference_out, "out")
    assert_close(final_state.float(), reference_state, "final state")


@pytest.mark.filterwarnings("error::numba.core.errors.NumbaPerformanceWarning")  # a prange run serially
def test_threaded_builds_match_reference(monkeypatch):
    """Small calls run the serial builds (and the suite's processes one thread each); force the
    threaded ones (2 threads) on the same checks, the Mamba-2 SSD and RG-LRU gated cores included."""
    from hybridlm.ops import numba_support
    from hybridlm.ops.ssd import ssd_ref

    from .test_rglru_kernels import test_gated_core_matches_reference
    from .test_ssd_kernels import kernel as ssd_kernel
    from .test_ssd_kernels import ssd_inputs

    monkeypatch.setattr(numba_support, "PARALLEL_MIN_WORK", 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert_kernel_matches(
            SelectiveScanFunction.apply, gated_selective_scan_ref, selective_scan_inputs(2, 90, 12, 4, 3)
        )
        assert_kernel_matches(RGLRUScanFunction.apply, rglru_scan_ref, rglru_inputs(2, 90, 300))
        test_causal_conv_kernel_matches_reference(90, True, True)
        assert_kernel_matches(ssd_kernel, ssd_ref, ssd_inputs(2, 97, 4, 64, 2, 64))
        test_gated_core_matches_reference(2, 37, 3, 5, "gelu_tanh")
    finally:
        torch.set_num_threads(threads)
