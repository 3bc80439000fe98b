"""Kernels against plain definitions of the same recurrences."""

import pytest
import torch

from hybridlm.ops.fftconv import (
    fft_causal_conv,
    modal_filter,
    modal_prefill_state,
    modal_recurrence_ref,
    modal_state_response,
)
from hybridlm.ops.linear_scan import SqrtBoundDerivative, linear_scan_ref
from hybridlm.ops.selective_scan import selective_scan_ref
from hybridlm.ops.ssd import ssd_chunked, ssd_ref


def naive_selective_scan(x, dt, A, B, C, D):
    """h_t = exp(dt A) h + dt B x; y = C h + D x, one channel at a time in float64."""
    batch, length, channels = x.shape
    groups = B.shape[2]
    y = torch.zeros(batch, length, channels, dtype=torch.float64)
    for b in range(batch):
        for c in range(channels):
            g = c // (channels // groups)
            h = torch.zeros(A.shape[1], dtype=torch.float64)
            for t in range(length):
                h = torch.exp(dt[b, t, c] * A[c]) * h + dt[b, t, c] * B[b, t, g] * x[b, t, c]
                y[b, t, c] = (C[b, t, g] * h).sum() + D[c] * x[b, t, c]
    return y


@pytest.mark.parametrize("groups", [1, 2])
def test_selective_scan_matches_definition(groups):
    x, dt = torch.randn(2, 9, 4, dtype=torch.float64), torch.rand(2, 9, 4, dtype=torch.float64)
    A = -torch.rand(4, 3, dtype=torch.float64) * 4
    B, C = torch.randn(2, 9, groups, 3, dtype=torch.float64), torch.randn(2, 9, groups, 3, dtype=torch.float64)
    D = torch.randn(4, dtype=torch.float64)
    y, _ = selective_scan_ref(x, dt, A, B, C, D)
    assert torch.allclose(y.double(), naive_selective_scan(x, dt, A, B, C, D), atol=1e-6)


def test_selective_scan_continues_from_state():
    x, dt = torch.randn(1, 12, 6), torch.rand(1, 12, 6)
    A, B, C, D = -torch.rand(6, 4), torch.randn(1, 12, 1, 4), torch.randn(1, 12, 1, 4), torch.randn(6)
    full, final = selective_scan_ref(x, dt, A, B, C, D)
    first, state = selective_scan_ref(x[:, :5], dt[:, :5], A, B[:, :5], C[:, :5], D)
    second, final2 = selective_scan_ref(x[:, 5:], dt[:, 5:], A, B[:, 5:], C[:, 5:], D, state)
    assert torch.allclose(torch.cat([first, second], 1), full, atol=1e-6)
    assert torch.allclose(final, final2, atol=1e-6)


@pytest.mark.parametrize("length, chunk", [(64, 16), (50, 16), (7, 64), (1, 8), (33, 32)])
@pytest.mark.parametrize("groups", [1, 2])
def test_ssd_chunked_matches_sequential(length, chunk, groups):
    heads, head_dim, d_state = 4, 3, 5
    x = torch.randn(2, length, heads, head_dim, dtype=torch.float64)
    dt = torch.nn.functional.softplus(torch.randn(2, length, heads, dtype=torch.float64))
    A = -torch.rand(heads, dtype=torch.float64) * 8 - 0.5
    B = torch.randn(2, length, groups, d_state, dtype=torch.float64)
    C = torch.randn(2, length, groups, d_state, dtype=torch.float64)
    D = torch.randn(heads, dtype=torch.float64)
    initial = torch.randn(2, heads, head_dim, d_state, dtype=torch.float64)
    y_ref, state_ref = ssd_ref(x, dt, A, B, C, D, initial)
    y, state = ssd_chunked(x, dt, A, B, C, D, initial, chunk_size=chunk)
    assert torch.allclose(y.double(), y_ref.double(), atol=1e-5, rtol=1e-5)
    assert torch.allclose(state.double(), state_ref.double(), atol=1e-5, rtol=1e-5)


def test_ssd_chunked_gradients_match_sequential():
    inputs = [
        torch.randn(1, 40, 2, 3),
        torch.rand(1, 40, 2),
        -torch.rand(2) - 0.1,
        torch.randn(1, 40, 1, 4),
        torch.randn(1, 40, 1, 4),
        torch.randn(2),
    ]
    grads = []
    for fn in (ssd_ref, lambda *a: ssd_chunked(*a, chunk_size=16)):
        leaves = [t.clone().requires_grad_() for t in inputs]
        y, state = fn(*leaves)
        (y.pow(2).sum() + state.sum()).backward()
        grads.append([leaf.grad for leaf in leaves])
    for reference, chunked in zip(*grads):
        assert torch.allclose(chunked, reference, rtol=1e-4, atol=1e-4)


def test_ssd_is_stable_for_large_decays():
    x, dt = torch.randn(1, 256, 2, 4), torch.full((1, 256, 2), 30.0)
    y, state = ssd_chunked(x, dt, -torch.tensor([16.0, 1.0]), torch.randn(1, 256, 1, 8), torch.randn(1, 256, 1, 8))
    assert torch.isfinite(y).all() and torch.isfinite(state).all()


def test_linear_scan_matches_loop_and_state():
    a, b = torch.rand(3, 20, 5), torch.randn(3, 20, 5)
    states, last = linear_scan_ref(a, b, torch.ones(3, 5))
    h = torch.ones(3, 5)
    for t in range(20):
        h = a[:, t] * h + b[:, t]
        assert torch.allclose(states[:, t], h, atol=1e-6)
    assert torch.allclose(last, h)


def test_sqrt_bound_derivative_clips_gradient():
    x = torch.tensor([0.0, 1e-12, 0.25], requires_grad=True)
    SqrtBoundDerivative.apply(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad[0] == pytest.approx(SqrtBoundDerivative.max_gradient)
    assert x.grad[2] == pytest.approx(1.0)


def test_fft_conv_matches_direct_convolution():
    u, h = torch.randn(2, 37, 3, dtype=torch.float64), torch.randn(3, 37, dtype=torch.float64)
    direct = torch.zeros_like(u)
    for t in range(37):
        for s in range(t + 1):
            direct[:, t] += h[:, t - s] * u[:, s]
    assert torch.allclose(fft_causal_conv(u, h).double(), direct, atol=1e-5)


def _modal(channels=3, modes=2):
    log_radius = -torch.rand(channels, modes) * 0.5 - 0.01
    angle = torch.rand(channels, modes) * 3.14
    residue = torch.complex(torch.randn(channels, modes), torch.randn(channels, modes))
    return log_radius, angle, residue


def test_modal_recurrence_equals_fft_of_modal_filter():
    log_radius, angle, residue = _modal()
    u = torch.randn(2, 50, 3)
    y_fft = fft_causal_conv(u, modal_filter(log_radius, angle, residue, 50))
    poles = torch.exp(torch.complex(log_radius, angle))
    y_rec, state = modal_recurrence_ref(u, poles, residue)
    assert torch.allclose(y_fft, y_rec, atol=1e-4)
    assert torch.allclose(modal_prefill_state(u, log_radius, angle), state, atol=1e-4)


def test_modal_chunk_continues_from_state():
    log_radius, angle, residue = _modal()
    u = torch.randn(1, 30, 3)
    poles = torch.exp(torch.complex(log_radius, angle))
    full, _ = modal_recurrence_ref(u, poles, residue)
    _, state = modal_recurrence_ref(u[:, :12], poles, residue)
    second = fft_causal_conv(u[:, 12:], modal_filter(log_radius, angle, residue, 18))
    second = second + modal_state_response(state, log_radius, angle, residue, 18)
    assert torch.allclose(second, full[:, 12:], atol=1e-4)
    _, final = modal_recurrence_ref(u, poles, residue)
    assert torch.allclose(modal_prefill_state(u[:, 12:], log_radius, angle, state), final, atol=1e-4)
