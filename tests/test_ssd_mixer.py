"""The fused Mamba-2 mixer op (ops/ssd_mixer_cpu.py: conv, dt, SSD, gated norm, one in_proj gradient)
against the same computation from the plain torch references, every gradient; its registration, and
the layer's training path through it."""

import pytest
import torch
import torch.nn.functional as F

from hybridlm import HybridLM
from hybridlm.layers.context import Context
from hybridlm.ops import custom_ops, dispatch
from hybridlm.ops.causal_conv import causal_conv1d_ref
from hybridlm.ops.ssd import gated_rms_norm_ref, ssd_ref

from .helpers import tiny_config
from .test_kernels import assert_close, assert_kernel_matches

EPS = 1e-5


def mixer_inputs(batch, length, heads, head_dim, groups, d_state, width=4, bias=True):
    d_inner = heads * head_dim
    conv_dim = d_inner + 2 * groups * d_state
    return [
        torch.randn(batch, length, d_inner + conv_dim + heads),  # projected
        torch.randn(conv_dim, 1, width) * 0.5,
        torch.randn(conv_dim) if bias else None,
        torch.randn(heads) - 1.0,  # dt_bias
        torch.log(torch.rand(heads) * 8 + 1),  # A_log
        torch.randn(heads),  # D
        torch.randn(d_inner),  # norm weight
    ]


def mixer_ref(projected, conv_weight, conv_bias, dt_bias, A_log, D, norm_weight, groups, low, high):
    """The layer's separate steps from the torch references (layers/mamba2.py's docstring)."""
    heads, conv_dim = dt_bias.shape[0], conv_weight.shape[0]
    d_inner = projected.shape[-1] - conv_dim - heads
    d_state = (conv_dim - d_inner) // (2 * groups)
    batch, length = projected.shape[:2]
    z, xBC, dt = projected.split([d_inner, conv_dim, heads], dim=-1)
    xBC = causal_conv1d_ref(xBC, conv_weight, conv_bias, None, True)
    x, B, C = xBC.split([d_inner, groups * d_state, groups * d_state], dim=-1)
    dt = F.softplus(dt + dt_bias).clamp(low, high)
    y, _ = ssd_ref(
        x.unflatten(-1, (heads, -1)), dt, -torch.exp(A_log), B.unflatten(-1, (groups, -1)),
        C.unflatten(-1, (groups, -1)), D,
    )  # fmt: skip
    return gated_rms_norm_ref(y.reshape(batch, length, d_inner), z, norm_weight, groups, EPS)


CASES = [  # (batch, length, heads, head_dim, groups, d_state), conv width, bias, dt clamp
    ((2, 130, 4, 16, 1, 16), 4, True, (0.0, float("inf"))),  # two chunks and a part, batch 2
    ((1, 63, 4, 16, 2, 16), 3, False, (0.0, float("inf"))),  # groups, no conv bias, under one chunk
    ((2, 70, 2, 64, 1, 64), 4, True, (0.05, 0.3)),  # n = p = 64, a clamp that binds at both ends
    ((1, 97, 6, 24, 3, 20), 4, True, (1e-3, float("inf"))),  # p 24 and n 20 padded to whole tiles
    ((2, 3, 2, 16, 1, 16), 4, True, (0.0, float("inf"))),  # three tokens: every one reads the zero window
    ((2, 260, 8, 64, 1, 16), 4, True, (0.0, float("inf"))),  # enough work for every kernel's threaded build
]


@pytest.mark.parametrize("shape,width,bias,dt_limit", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_ssd_mixer_op_matches_the_references(shape, width, bias, dt_limit):
    """The normed output and the gradients of projected and of every weight."""
    torch.manual_seed(sum(shape) + width)
    inputs = mixer_inputs(*shape, width=width, bias=bias)
    groups, (low, high) = shape[4], dt_limit
    present = [index for index, t in enumerate(inputs) if t is not None]

    def with_all(fn):
        def call(*given):
            full = list(inputs)
            for index, t in zip(present, given):
                full[index] = t
            return fn(full)

        return call

    assert_kernel_matches(
        with_all(lambda a: (custom_ops.ssd_mixer(*a, groups, low, high, EPS)[0],)),
        with_all(lambda a: (mixer_ref(*a, groups, low, high),)),
        [inputs[index] for index in present],
    )


@pytest.mark.parametrize("bias", [True, False])
def test_ssd_mixer_custom_op_passes_opcheck(bias):
    torch.manual_seed(11)
    inputs = mixer_inputs(2, 70, 4, 8, 2, 8, bias=bias)
    args = [t.clone().requires_grad_() if t is not None else None for t in inputs]
    torch.library.opcheck(custom_ops.ssd_mixer, [*args, 2, 0.01, float("inf"), EPS])


def _training_grads(mixer, u, choice):
    mixer.zero_grad(set_to_none=True)
    leaf = u.clone().requires_grad_()
    with dispatch.kernels(choice):
        out = mixer(leaf, None, Context(positions=torch.arange(u.shape[1]).expand(u.shape[0], -1)))
    out.mul(torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
    return out.detach(), leaf.grad, {name: p.grad.clone() for name, p in mixer.named_parameters()}


def test_layer_training_takes_the_fused_op_and_matches_the_reference(monkeypatch):
    """One ssd_mixer call per training forward; output, input and parameter gradients as the references'."""
    torch.manual_seed(12)
    mamba2 = {"d_state": 16, "head_dim": 16, "n_groups": 2, "dt_limit": (0.01, 0.5)}
    mixer = HybridLM(tiny_config(pattern="D", mamba2=mamba2)).layers[0].mixer
    u = torch.randn(2, 75, mixer.in_proj.in_features)
    calls = []
    fused = custom_ops.ssd_mixer
    monkeypatch.setattr(custom_ops, "ssd_mixer", lambda *a: calls.append(1) or fused(*a))
    out, grad_u, grads = _training_grads(mixer, u, "cpu")
    assert len(calls) == 1
    out_ref, grad_u_ref, grads_ref = _training_grads(mixer, u, "reference")
    assert_close(out, out_ref, "out")
    assert_close(grad_u, grad_u_ref, "grad u")
    for name, grad in grads.items():
        assert_close(grad, grads_ref[name], name)


def test_hooks_on_the_conv_see_it_run_in_training():
    """A forward hook on the conv or the norm keeps the layer on its separate ops, with the same result."""
    torch.manual_seed(13)
    mixer = HybridLM(tiny_config(pattern="D", mamba2={"d_state": 8, "head_dim": 8})).layers[0].mixer
    u = torch.randn(1, 20, mixer.in_proj.in_features)
    out, grad_u, _ = _training_grads(mixer, u, "cpu")
    seen = []
    handle = mixer.conv.register_forward_hook(lambda module, args, output: seen.append(output[0].shape))
    try:
        hooked, hooked_grad_u, _ = _training_grads(mixer, u, "cpu")
    finally:
        handle.remove()
    assert seen == [(1, 20, mixer.conv_dim)]
    assert_close(hooked, out, "out")
    assert_close(hooked_grad_u, grad_u, "grad u")
