"""Mamba-2 SSD kernels (issue 14, item 1) against the sequential reference ops/ssd.ssd_ref: the numba
recurrence (outputs, final states, every gradient), its custom op, the dispatch, the fused gated
RMSNorm, and the fused single-token decoding step against the layer's torch code."""

import pytest
import torch
import torch.nn.functional as F

from hybridlm import HybridLM
from hybridlm.layers.context import Context
from hybridlm.ops import custom_ops, dispatch
from hybridlm.ops.ssd import gated_rms_norm_ref, ssd_chunked, ssd_ref

from .helpers import tiny_config
from .test_kernels import assert_close, assert_kernel_matches


def ssd_inputs(batch, length, heads, head_dim, groups, d_state, dt_shift=-1.0):
    return [
        torch.randn(batch, length, heads, head_dim),
        F.softplus(torch.randn(batch, length, heads) + dt_shift),  # dt
        -torch.rand(heads) * 6 - 0.2,  # A
        torch.randn(batch, length, groups, d_state),
        torch.randn(batch, length, groups, d_state),
        torch.randn(heads),  # D
        torch.randn(batch, heads, head_dim, d_state),  # initial state
    ]


def kernel(*inputs):
    return custom_ops.ssd(*inputs)[:2]


SHAPES = [  # (batch, length, heads, head_dim, groups, d_state)
    (1, 1, 2, 8, 1, 4),
    (2, 63, 4, 8, 2, 16),
    (2, 64, 4, 16, 1, 8),
    (1, 65, 6, 8, 3, 8),
    (2, 200, 4, 8, 2, 16),
    (1, 130, 2, 64, 1, 64),  # n = p = 64: whole register tiles, two chunks and a part
    (2, 97, 4, 64, 2, 64),  # the same with groups and batch
    (1, 1, 2, 64, 1, 64),  # one token
    (2, 150, 3, 48, 1, 32),  # p padded from 48 to 64
    (1, 70, 2, 24, 1, 384),  # a large state
    (2, 80, 4, 128, 2, 20),  # p = 128: two wide tiles of 64 channels, n padded from 20 to 32
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_ssd_kernel_matches_reference(shape):
    """Outputs, final states and gradients of x, dt, A, B, C, D and the initial state."""
    torch.manual_seed(sum(shape))
    assert_kernel_matches(kernel, ssd_ref, ssd_inputs(*shape))


def test_ssd_kernel_is_stable_for_large_decays():
    torch.manual_seed(0)
    inputs = ssd_inputs(1, 100, 2, 8, 1, 8, dt_shift=4.0)  # dt ~ 4, A up to -6: decays down to e^-25
    inputs[2] = torch.tensor([-16.0, -0.5])
    y, state = kernel(*inputs)
    y_ref, state_ref = ssd_ref(*inputs)
    assert torch.isfinite(y).all() and torch.isfinite(state).all()
    assert_close(y, y_ref, "y")
    assert_close(state, state_ref, "state")


def test_ssd_custom_op_passes_opcheck():
    torch.manual_seed(1)
    args = [t.clone().requires_grad_() for t in ssd_inputs(2, 70, 4, 8, 2, 8)]
    torch.library.opcheck(custom_ops.ssd, args)


@pytest.mark.parametrize("grad", [False, True])
def test_dispatch_ssd_takes_the_kernel_and_matches_the_reference(grad):
    """Without D or an initial state too; y keeps x's dtype, the state is fp32."""
    torch.manual_seed(2)
    x, dt, A, B, C, _, _ = ssd_inputs(2, 77, 4, 8, 2, 8)
    with torch.set_grad_enabled(grad), dispatch.kernels("cpu"):
        leaves = [t.clone().requires_grad_(grad) for t in (x, dt, A, B, C)]
        y, state = dispatch.ssd(*leaves)
    y_ref, state_ref = ssd_ref(x, dt, A, B, C)
    assert y.dtype == x.dtype and state.dtype == torch.float32 and state.shape == state_ref.shape
    assert y.requires_grad == grad
    assert_close(y.detach(), y_ref, "y")
    assert_close(state.detach(), state_ref, "state")


def test_reference_backend_keeps_the_chunked_form():
    torch.manual_seed(3)
    inputs = ssd_inputs(1, 40, 2, 8, 1, 8)
    with dispatch.kernels("reference"):
        y, state = dispatch.ssd(*inputs, chunk_size=16)
    y_chunked, state_chunked = ssd_chunked(*inputs, chunk_size=16)
    assert torch.equal(y, y_chunked) and torch.equal(state, state_chunked)


def _decode(mixer, u, choice):
    """Decode u (b, l, d) one token at a time: the outputs and the final (conv, ssm) states."""
    state = mixer.allocate_state(u.shape[0], None, "cpu", torch.float32)
    outputs = []
    with torch.no_grad(), dispatch.kernels(choice):
        for t in range(u.shape[1]):
            ctx = Context(positions=torch.full((u.shape[0], 1), t))
            outputs.append(mixer(u[:, t : t + 1], state, ctx))
    return torch.cat(outputs, 1), state


@pytest.mark.parametrize(
    "options",
    [
        {"n_groups": 1},
        {"n_groups": 2, "d_conv": 3, "conv_bias": False},
        {"n_groups": 2, "dt_limit": (0.05, 0.2)},  # a clamp that binds at both ends
    ],
    ids=["plain", "groups-nobias", "dt-clamp"],
)
def test_fused_decode_step_matches_layer_code_and_full_forward(options):
    torch.manual_seed(4)
    mixer = HybridLM(tiny_config(pattern="D", mamba2={"d_state": 8, "head_dim": 8, **options})).layers[0].mixer
    with torch.no_grad():
        for parameter in mixer.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)  # untie the norm weight, D and biases from their init
    u = torch.randn(2, 9, mixer.in_proj.in_features)
    fused, fused_state = _decode(mixer, u, "cpu")
    plain, plain_state = _decode(mixer, u, "reference")
    assert_close(fused, plain, "decoded outputs")
    assert_close(fused_state.conv, plain_state.conv, "conv state")
    assert_close(fused_state.ssm, plain_state.ssm, "ssm state")
    with torch.no_grad(), dispatch.kernels("cpu"):
        full = mixer(u, None, Context(positions=torch.arange(9).expand(2, 9)))
    assert_close(fused, full, "decoded vs full forward")


@pytest.mark.parametrize(
    "mamba2", [{"d_state": 8, "head_dim": 8, "n_groups": 2}, {"d_state": 64, "head_dim": 32, "n_groups": 1}]
)
def test_mamba2_layer_gradients_match_with_and_without_the_kernel(mamba2):
    """Under autograd the kernels read x, B, C and z as column slices (no copies): every parameter's gradient."""
    torch.manual_seed(5)
    model = HybridLM(tiny_config(pattern="D", mamba2=mamba2))
    tokens = torch.randint(0, 50, (2, 70))
    grads = {}
    for choice in ("cpu", "reference"):
        model.zero_grad(set_to_none=True)
        with dispatch.kernels(choice):
            model(tokens).logsumexp(-1).sum().backward()
        grads[choice] = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    assert grads["cpu"].keys() == grads["reference"].keys()
    for name, grad in grads["cpu"].items():
        assert_close(grad, grads["reference"][name], name)


@pytest.mark.parametrize("shape,groups", [((2, 70, 16), 1), ((1, 130, 24), 3), ((1, 1, 8), 2), ((2, 33, 40), 2)])
def test_gated_rms_norm_kernel_matches_reference(shape, groups):
    torch.manual_seed(6)
    inputs = [torch.randn(shape), torch.randn(shape) * 2, torch.randn(shape[-1])]
    assert_kernel_matches(
        lambda y, z, w: (custom_ops.gated_rms_norm(y, z, w, groups, 1e-5),),
        lambda y, z, w: (gated_rms_norm_ref(y, z, w, groups, 1e-5),),
        inputs,
    )
    with torch.no_grad(), dispatch.kernels("cpu"):
        assert_close(dispatch.gated_rms_norm(*inputs, groups, 1e-5), gated_rms_norm_ref(*inputs, groups, 1e-5))


def test_gated_rms_norm_custom_op_passes_opcheck():
    torch.manual_seed(7)
    args = [torch.randn(2, 9, 12, requires_grad=True), torch.randn(2, 9, 12, requires_grad=True)]
    torch.library.opcheck(custom_ops.gated_rms_norm, [*args, torch.randn(12, requires_grad=True), 2, 1e-5])


def test_mamba2_layer_benchmark_rows_time_both_sides():
    pytest.importorskip("transformers")
    from hybridlm.bench.kernels import huggingface_mamba2_rows

    rows = huggingface_mamba2_rows([16], repeats=1, d_state=8, head_dim=8)
    assert [row.name for row in rows] == ["Mamba-2 layer fwd+bwd L=16 n=8 p=8", "Mamba-2 layer fwd L=16 n=8 p=8"]
    assert all(row.ours > 0 and row.baseline > 0 for row in rows)


def test_kernels_read_column_slices_without_copies():
    """x, B, C and z as the layer hands them over without gradients: column slices of one buffer."""
    torch.manual_seed(8)
    heads, head_dim, d_state = 4, 8, 16
    d_inner = heads * head_dim
    buffer = torch.randn(2, 70, d_inner + 2 * d_state + 5)
    x = buffer[..., :d_inner].view(2, 70, heads, head_dim)
    B = buffer[..., d_inner : d_inner + d_state].view(2, 70, 1, d_state)
    C = buffer[..., d_inner + d_state : -5].view(2, 70, 1, d_state)
    z = buffer[..., 3 : 3 + d_inner]
    dt, A, D = F.softplus(torch.randn(2, 70, heads) - 1), -torch.rand(heads) - 0.5, torch.randn(heads)
    weight = torch.randn(d_inner)
    assert not x.is_contiguous() and not z.is_contiguous()
    with torch.no_grad(), dispatch.kernels("cpu"):
        y, state = dispatch.ssd(x, dt, A, B, C, D)
        normed = dispatch.gated_rms_norm(y.flatten(-2), z, weight, 2, 1e-5)
    y_ref, state_ref = ssd_ref(x, dt, A, B, C, D)
    assert_close(y, y_ref, "y")
    assert_close(state, state_ref, "state")
    assert_close(normed, gated_rms_norm_ref(y_ref.flatten(-2), z, weight, 2, 1e-5), "gated norm")


def test_ssd_kernel_pads_checkpoints_to_whole_tiles():
    """n and p are zero-padded to the register tiles; the fake (meta) op reports the same shape."""
    torch.manual_seed(9)
    inputs = ssd_inputs(1, 70, 2, 24, 1, 20)
    _, _, checkpoints = custom_ops.ssd(*inputs)
    assert checkpoints.shape == (1, 3, 2, 32, 32)  # ceil(70 / 64) + 1 states, n 20 -> 32, p 24 -> 32
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake = custom_ops.ssd(*(mode.from_tensor(t) for t in inputs))[2]
    assert fake.shape == checkpoints.shape


@pytest.mark.parametrize("with_state", [False, True])
def test_causal_conv_kernel_reads_a_column_slice(with_state):
    """Mamba-2's conv input xBC is a column slice of in_proj's output; 20 channels: one whole vector
    and four one by one. Outputs and gradients against the reference."""
    from hybridlm.ops.causal_conv import causal_conv1d_ref
    from hybridlm.ops.causal_conv_cpu import CausalConv1dFunction

    torch.manual_seed(10)
    buffer = torch.randn(2, 41, 31)
    x = buffer[..., 5:25]
    weight, bias = torch.randn(20, 1, 3), torch.randn(20)
    state = torch.randn(2, 20, 2) if with_state else None
    assert not x.is_contiguous()
    leaves = [t.clone().requires_grad_() if t is not None else None for t in (buffer, weight, bias, state)]
    out = CausalConv1dFunction.apply(leaves[0][..., 5:25], leaves[1], leaves[2], leaves[3], True)
    reference_leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in leaves]
    expected = causal_conv1d_ref(reference_leaves[0][..., 5:25], *reference_leaves[1:], True)
    assert_close(out.detach(), expected.detach(), "out")
    weights = torch.linspace(-1, 2, out.numel()).view(out.shape)
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    for name, leaf, reference in zip(("x", "weight", "bias", "state"), leaves, reference_leaves):
        if leaf is not None:
            assert_close(leaf.grad, reference.grad, name)
