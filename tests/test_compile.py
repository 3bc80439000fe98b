"""The fused kernels as torch custom ops (issue 14, item 5): their registrations pass torch's own
checks, gradients through them equal the references, and torch.compile sees one graph per forward."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import hybridlm
from hybridlm import HybridLM
from hybridlm.ops import custom_ops
from hybridlm.ops.causal_conv import causal_conv1d_ref
from hybridlm.ops.fftconv import modal_recurrence_ref
from hybridlm.ops.linear_scan import rglru_scan_ref
from hybridlm.presets import preset_config

from .helpers import tiny_config
from .test_kernels import (
    assert_kernel_matches,
    gated_selective_scan_ref,
    modal_inputs,
    rglru_inputs,
    selective_scan_inputs,
)


def _scan_inputs():
    x, dt, A, B, C, D, z, h0 = selective_scan_inputs(2, 70, 12, 4, 3)
    return [x, dt, A, B, C, D, z, h0]


def _op_cases():
    conv = [torch.randn(2, 9, 6), torch.randn(6, 1, 4), torch.randn(6), torch.randn(2, 6, 3)]
    rglru = rglru_inputs(2, 20, 5)
    return {
        "selective_scan": (custom_ops.selective_scan, _scan_inputs()),
        "causal_conv1d": (custom_ops.causal_conv1d, [*conv, True]),
        "causal_conv1d_no_bias_state": (custom_ops.causal_conv1d, [conv[0], conv[1], None, None, False]),
        "rglru_scan": (custom_ops.rglru_scan, rglru),
        "modal_recurrence": (custom_ops.modal_recurrence, modal_inputs(2, 70, 3, 2)),
    }


@pytest.mark.parametrize("case", sorted(_op_cases()))
def test_custom_op_registration_passes_opcheck(case):
    """Schema, fake (meta) implementation, autograd registration and AOT dispatch, by torch."""
    op, inputs = _op_cases()[case]
    args = [
        t.clone().requires_grad_(t.is_floating_point() or t.is_complex()) if torch.is_tensor(t) else t for t in inputs
    ]
    torch.library.opcheck(op, args)


def _leaf(t):
    return t.clone().requires_grad_(t.is_floating_point() or t.is_complex())


def test_custom_ops_gradients_equal_the_references():
    assert_kernel_matches(lambda *a: custom_ops.selective_scan(*a)[:2], gated_selective_scan_ref, _scan_inputs())
    assert_kernel_matches(custom_ops.rglru_scan, rglru_scan_ref, rglru_inputs(2, 40, 7))
    modal = modal_inputs(2, 100, 3, 2)
    assert_kernel_matches(lambda *a: custom_ops.modal_recurrence(*a)[:2], modal_recurrence_ref, modal)
    conv = [torch.randn(2, 37, 10), torch.randn(10, 1, 4), torch.randn(10), torch.randn(2, 10, 3)]
    assert_kernel_matches(
        lambda *a: (custom_ops.causal_conv1d(*a, True),), lambda *a: (causal_conv1d_ref(*a, True),), conv
    )


def graphs_of_one_forward(model, tokens) -> tuple[int, list[str]]:
    """How many graphs dynamo makes of one forward, and the file of each break."""
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(tokens)
    return explanation.graph_count, [reason.user_stack[-1].filename for reason in explanation.break_reasons]


def test_small_ssm_model_compiles_to_one_graph_and_trains_the_same():
    model = HybridLM(tiny_config(pattern="M R H M", mamba={"n_heads": 2}))
    tokens = torch.randint(0, 50, (2, 40))
    assert graphs_of_one_forward(model, tokens) == (1, [])
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    for run in (model, compiled):
        model.zero_grad()
        F.cross_entropy(run(tokens).flatten(0, 1), tokens.flatten()).backward()
        if run is model:
            expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, expected[name], rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("name", hybridlm.presets())
def test_every_preset_forward_is_one_graph(name):
    model = HybridLM(preset_config(name, "tiny"))
    graphs, break_files = graphs_of_one_forward(model, torch.randint(0, model.config.vocab_size, (1, 24)))
    assert (graphs, break_files) == (1, [])


def test_importing_the_library_leaves_torch_compile_unloaded():
    """The dispatch's constant marker does not import torch._dynamo (1.4-1.7 s of every CLI call)."""
    probe = "import sys, hybridlm; print('torch._dynamo' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
