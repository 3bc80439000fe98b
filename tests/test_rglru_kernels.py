"""The RG-LRU block's fused kernels against plain PyTorch: the prefill/training core (gates, recurrence,
product with the y branch; forward and backward) and the one-token decoding step."""

import pytest
import torch

from hybridlm.layers.context import Context
from hybridlm.layers.mlp import ACTIVATION_FUNCTIONS
from hybridlm.ops import custom_ops, rglru_step_cpu
from hybridlm.ops.dispatch import kernels
from hybridlm.ops.linear_scan import rglru_scan_ref
from hybridlm.ops.rglru_gated_cpu import rglru_gated_forward
from tests.helpers import tiny_config

pytest.importorskip("numba")


def reference_gated(x, y_pre, w_i, b_i, w_r, b_r, log_a_scale, reset, h0, activation):
    """Griffin eq. 1-4 written out: block-diagonal gates, sigmoid, the reference scan, times act(y)."""
    blocks = x.unflatten(-1, (w_i.shape[0], -1))
    gate_i = torch.sigmoid((torch.einsum("blhi,hio->blho", blocks, w_i) + b_i).flatten(-2))
    gate_r = torch.sigmoid((torch.einsum("blhi,hio->blho", blocks, w_r) + b_r).flatten(-2))
    states, final = rglru_scan_ref(x, gate_i, gate_r, log_a_scale, reset, h0)
    return states * ACTIVATION_FUNCTIONS[activation](y_pre), final


def gated_inputs(batch, length, heads, block, seed=0):
    generator = torch.Generator().manual_seed(seed)
    channels = heads * block

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=generator) * scale

    positions = torch.arange(length).expand(batch, length).clone()
    if length > 4:
        positions[-1, length // 2 :] -= positions[-1, length // 2].clone()  # a document starts mid-row
    positions[0] += 3  # the first row continues from a state: no reset at its start
    return [
        randn(batch, length, channels),
        randn(batch, length, channels),
        randn(heads, block, block, scale=block**-0.5),
        randn(heads, block, scale=0.3),
        randn(heads, block, block, scale=block**-0.5),
        randn(heads, block, scale=0.3),
        -8 * torch.nn.functional.softplus(randn(channels) - 4),
        positions == 0,
        randn(batch, channels),
    ]


def _leaves(inputs):
    return [t.clone().requires_grad_(t.is_floating_point()) for t in inputs]


@pytest.mark.parametrize(
    "batch, length, heads, block, activation",
    [
        (1, 1, 1, 8, "gelu_tanh"),
        (2, 37, 3, 5, "gelu_tanh"),
        (3, 9, 2, 16, "silu"),
        (2, 12, 4, 3, "gelu"),
        (1, 6, 2, 4, "relu"),
    ],
)
def test_gated_core_matches_reference(batch, length, heads, block, activation):
    inputs = gated_inputs(batch, length, heads, block)
    grad_out = torch.randn(batch, length, heads * block)
    grad_final = torch.randn(batch, heads * block)
    ours, theirs = _leaves(inputs), _leaves(inputs)
    out, final, states, _ = custom_ops.rglru_gated(*ours, activation)
    ref_out, ref_final = reference_gated(*theirs, activation)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(final, ref_final, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(states[:, -1], ref_final, rtol=1e-5, atol=1e-5)
    (out * grad_out).sum().backward(inputs=[t for t in ours if t.requires_grad])
    (ref_out * grad_out).sum().backward()
    for name, a, b in zip(["x", "y", "w_i", "b_i", "w_r", "b_r", "scale", "reset", "h0"], ours, theirs):
        if a.requires_grad:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
    # the final state's own gradient flows too (cached training continues from it)
    ours, theirs = _leaves(inputs), _leaves(inputs)
    (custom_ops.rglru_gated(*ours, activation)[1] * grad_final).sum().backward()
    (reference_gated(*theirs, activation)[1] * grad_final).sum().backward()
    for a, b in zip(ours, theirs):
        if a.requires_grad:  # the final state does not depend on y: no gradient there in the reference
            expected = torch.zeros_like(a) if b.grad is None else b.grad
            torch.testing.assert_close(a.grad, expected, rtol=1e-4, atol=1e-4)


def test_gated_forward_without_grad_matches_the_op():
    inputs = gated_inputs(2, 33, 2, 8)
    out, final, states, _ = rglru_gated_forward(*inputs, "gelu_tanh")
    assert states.numel() == 0  # nothing kept for a backward that will not run
    ref_out, ref_final = reference_gated(*inputs, "gelu_tanh")
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(final, ref_final, rtol=1e-5, atol=1e-5)


def test_gated_sqrt_gradient_is_clipped_as_the_reference():
    """r -> 0 gives a -> 1, where d sqrt(1 - a^2) is clipped (recurrentgemma)."""
    inputs = gated_inputs(1, 5, 1, 4)
    inputs[5] = torch.full_like(inputs[5], -30.0)  # recurrence gate ~ 0
    inputs[6] = torch.full_like(inputs[6], -1e-3)
    ours, theirs = _leaves(inputs), _leaves(inputs)
    custom_ops.rglru_gated(*ours, "gelu_tanh")[0].sum().backward()
    reference_gated(*theirs, "gelu_tanh")[0].sum().backward()
    assert torch.isfinite(ours[6].grad).all()
    torch.testing.assert_close(ours[6].grad, theirs[6].grad, rtol=1e-3, atol=1e-3)


def _block(pattern="R", **fields):
    from hybridlm.model import HybridLM

    torch.manual_seed(0)
    model = HybridLM(tiny_config(pattern=pattern, **fields))
    for parameter in model.parameters():  # nonzero biases and a_param spread, so every term counts
        parameter.data += 0.05 * torch.randn_like(parameter)
    return model.layers[0].mixer


@pytest.mark.parametrize(
    "batch, options",
    [(1, {"n_heads": 2}), (3, {"n_heads": 2}), (2, {"bias": False, "activation": "silu", "d_conv": 3})],
)
@pytest.mark.parametrize("linears_in_kernel", [True, False])
def test_decode_step_matches_the_layer_code(batch, options, linears_in_kernel, monkeypatch):
    if not linears_in_kernel:  # the three linears through torch, as for larger widths
        monkeypatch.setattr(rglru_step_cpu, "LINEARS_IN_KERNEL_MAX", 0)
    mixer = _block(rglru=options).eval()
    steps, d_model = 7, mixer.linear_x.in_features
    u = torch.randn(batch, steps, d_model)
    outs = {}
    for choice in ("reference", "cpu"):
        state = mixer.allocate_state(batch, None, "cpu", torch.float32)
        with kernels(choice), torch.inference_mode():
            rows = [mixer(u[:, t : t + 1], state, Context(positions=torch.full((batch, 1), t))) for t in range(steps)]
        outs[choice] = (torch.cat(rows, 1), state.conv.clone(), state.rnn.clone())
    for ours, reference in zip(outs["cpu"], outs["reference"]):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        full = mixer(u, None, Context(positions=torch.arange(steps).expand(batch, steps)))
    torch.testing.assert_close(outs["cpu"][0], full, rtol=1e-5, atol=1e-5)


def test_decode_step_resets_a_row_at_position_zero():
    """A row whose token is at position 0 forgets its state (a = 0) while the others carry on."""
    mixer = _block().eval()
    d_model = mixer.linear_x.in_features
    results = {}
    for choice in ("reference", "cpu"):
        state = mixer.allocate_state(2, None, "cpu", torch.float32)
        torch.manual_seed(1)
        state.rnn.normal_()
        state.conv.normal_()
        u = torch.randn(2, 1, d_model)
        with kernels(choice), torch.inference_mode():
            out = mixer(u, state, Context(positions=torch.tensor([[0], [5]])))
        results[choice] = (out, state.rnn.clone())
    torch.testing.assert_close(results["cpu"][0], results["reference"][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results["cpu"][1], results["reference"][1], rtol=1e-5, atol=1e-5)


def test_decode_step_follows_in_place_weight_updates():
    mixer = _block().eval()
    state = mixer.allocate_state(1, None, "cpu", torch.float32)
    u = torch.randn(1, 1, mixer.linear_x.in_features)
    ctx = Context(positions=torch.tensor([[0]]))
    with kernels("cpu"), torch.inference_mode():
        before = mixer(u, state, ctx)
    with torch.no_grad():
        mixer.rg_lru.input_gate_bias.add_(1.0)
    state = mixer.allocate_state(1, None, "cpu", torch.float32)
    with kernels("cpu"), torch.inference_mode():
        after = mixer(u, state, ctx)
    with kernels("reference"), torch.inference_mode():
        expected = mixer(u, mixer.allocate_state(1, None, "cpu", torch.float32), ctx)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-5)


def test_block_training_gradients_match_the_reference():
    """The whole block (linears, conv, fused core) under autograd, kernels vs references."""
    mixer = _block(rglru={"n_heads": 4})
    u = torch.randn(2, 19, mixer.linear_x.in_features)
    positions = torch.arange(19).expand(2, 19).clone()
    positions[1, 10:] -= 10  # a second document in row 1
    grads = {}
    for choice in ("reference", "cpu"):
        mixer.zero_grad(set_to_none=True)
        leaf = u.clone().requires_grad_()
        with kernels(choice):
            out = mixer(leaf, None, Context(positions=positions))
        (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
        grads[choice] = (out.detach(), leaf.grad, {n: p.grad.clone() for n, p in mixer.named_parameters()})
    torch.testing.assert_close(grads["cpu"][0], grads["reference"][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads["cpu"][1], grads["reference"][1], rtol=1e-4, atol=1e-5)
    for name, grad in grads["cpu"][2].items():
        torch.testing.assert_close(grad, grads["reference"][2][name], rtol=1e-4, atol=1e-5, msg=name)


def test_chunked_prefill_continues_the_state():
    mixer = _block().eval()
    u = torch.randn(2, 23, mixer.linear_x.in_features)
    with kernels("cpu"), torch.no_grad():
        full = mixer(u, None, Context(positions=torch.arange(23).expand(2, 23)))
        state = mixer.allocate_state(2, None, "cpu", torch.float32)
        first = mixer(u[:, :10], state, Context(positions=torch.arange(10).expand(2, 10)))
        rest = mixer(u[:, 10:], state, Context(positions=torch.arange(10, 23).expand(2, 13)))
    torch.testing.assert_close(torch.cat([first, rest], 1), full, rtol=1e-5, atol=1e-5)
