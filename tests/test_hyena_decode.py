"""Hyena's cached decoding (complex128 modal recurrence) against its full forward (fp32 FFT with a
float64 filter) over long contexts with poles up to |p| = 0.9999 (issue 14, item 6)."""

import pytest
import torch

from hybridlm.layers.context import Context
from hybridlm.layers.hyena import Hyena, HyenaConfig

RELATIVE = 1e-5
RADIUS_MAX = 0.9999


def long_memory_hyena(d_model=16, n_modes=4):
    torch.manual_seed(0)
    hyena = Hyena(d_model, HyenaConfig(n_modes=n_modes, decay_min=0.99, decay_max=RADIUS_MAX)).eval()
    with torch.no_grad():  # one pole exactly at the limit: -log|p| = softplus(rho)
        neg_log_radius = -torch.log(torch.tensor(RADIUS_MAX))
        hyena.pole_rho[0, 0] = neg_log_radius + torch.log(-torch.expm1(-neg_log_radius))
    return hyena


def decode_error(length: int, prompt: int) -> float:
    """max |cached - full| / max |full| when `prompt` tokens are prefilled (FFT with a state) and the
    rest of `length` tokens are decoded one at a time."""
    hyena = long_memory_hyena()
    u = torch.randn(1, length, hyena.d_model)
    with torch.inference_mode():
        full = hyena(u, None, Context(positions=torch.arange(length).unsqueeze(0)))
        state = hyena.allocate_state(1, None, u.device, u.dtype)
        outputs = [hyena(u[:, :prompt], state, Context(positions=torch.arange(prompt).unsqueeze(0)))]
        for t in range(prompt, length):
            outputs.append(hyena(u[:, t : t + 1], state, Context(positions=torch.tensor([[t]]))))
    cached = torch.cat(outputs, 1)
    return ((cached - full).abs().max() / full.abs().max()).item()


def test_poles_reach_the_tested_radius():
    log_radius, _ = long_memory_hyena().poles()
    assert torch.exp(log_radius).max().item() == pytest.approx(RADIUS_MAX, abs=1e-7)


def test_decoding_matches_full_forward_at_2k():
    assert decode_error(2048, prompt=16) <= RELATIVE


@pytest.mark.slow
@pytest.mark.parametrize("prompt", [16, 8192])
def test_decoding_matches_full_forward_at_16k(prompt):
    assert decode_error(16384, prompt=prompt) <= RELATIVE


def test_the_fused_hyena_step_keeps_the_recurrence_exact_at_4k():
    """The whole-step decode's Hyena kernel (ops/hyena_step_cpu.py: norm, in_proj, conv, complex128
    recurrence, skip, out_proj in one call) against the layer's own recurrent step, token by token."""
    pytest.importorskip("numba")
    import numpy as np

    from hybridlm.layers.norm import RMSNorm
    from hybridlm.ops import hyena_step_cpu

    hyena, norm, length = long_memory_hyena(), RMSNorm(16), 4096
    u = torch.randn(1, length, hyena.d_model)
    eager_state = hyena.allocate_state(1, None, u.device, u.dtype)
    fused_state = hyena.allocate_state(1, None, u.device, u.dtype)
    with torch.inference_mode():
        args = hyena_step_cpu.program_step(hyena, norm, fused_state).args
        eager, fused = [], []
        for t in range(length):
            eager.append(hyena(norm(u[:, t : t + 1]), eager_state, Context(positions=torch.tensor([[t]])))[:, 0])
            out = np.empty((1, hyena.d_model), np.float32)
            hyena_step_cpu._sublayer_step(u[:, t].numpy(), *args, out)
            fused.append(torch.from_numpy(out))
    eager, fused = torch.cat(eager), torch.cat(fused)
    assert ((fused - eager).abs().max() / eager.abs().max()).item() <= RELATIVE
    assert (fused_state.modal - eager_state.modal).abs().max() <= 1e-5 * eager_state.modal.abs().max()
    assert torch.allclose(fused_state.conv, eager_state.conv, rtol=1e-5, atol=1e-6)
