"""The MoE layer's compiled path: `hybridlm::grouped_mm` and the sorted-by-expert forward equal the
eager loop over experts, in values and gradients, and compile to one graph."""

import pytest
import torch
import torch.nn.functional as F

from hybridlm.layers.moe import MoE
from hybridlm.ops.grouped_mm import grouped_mm


def _grouped_inputs():
    x = torch.randn(9, 5, dtype=torch.float64)
    weight = torch.randn(4, 5, 3, dtype=torch.float64)
    group_ends = torch.tensor([2, 2, 7, 9], dtype=torch.int32)  # the second group has no rows
    return x, weight, group_ends


def test_grouped_mm_is_each_groups_product_and_registers_cleanly():
    x, weight, group_ends = _grouped_inputs()
    expected = torch.cat([x[:2] @ weight[0], x[2:7] @ weight[2], x[7:] @ weight[3]])
    torch.testing.assert_close(grouped_mm(x, weight, group_ends), expected)
    torch.library.opcheck(grouped_mm, (x.requires_grad_(), weight.requires_grad_(), group_ends))


def test_grouped_mm_gradients_pass_gradcheck_with_an_empty_group():
    x, weight, group_ends = _grouped_inputs()
    assert torch.autograd.gradcheck(
        lambda a, b: grouped_mm(a, b, group_ends), (x.requires_grad_(), weight.requires_grad_())
    )


@pytest.mark.parametrize("gated, bias", [(True, False), (False, True)])
def test_compiled_moe_equals_the_eager_loop(gated, bias):
    torch.manual_seed(0)
    moe = MoE(d_model=12, d_ff=20, n_experts=5, top_k=2, activation="gelu", gated=gated, bias=bias)
    x = torch.randn(3, 7, 12)
    compiled = torch.compile(moe, backend="aot_eager", fullgraph=True)
    results = []
    for run in (moe, compiled):
        moe.zero_grad()
        leaf = x.clone().requires_grad_()
        out = run(leaf)
        F.mse_loss(out, torch.ones_like(out)).backward()
        grads = {name: p.grad.clone() for name, p in moe.named_parameters() if p.grad is not None}
        results.append((out.detach(), leaf.grad, grads))
    (eager_out, eager_x_grad, eager_grads), (compiled_out, compiled_x_grad, compiled_grads) = results
    torch.testing.assert_close(compiled_out, eager_out)
    torch.testing.assert_close(compiled_x_grad, eager_x_grad)
    assert eager_grads.keys() == compiled_grads.keys()  # every expert gets a gradient in both paths
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, msg=name)
    with torch.no_grad():  # decoding-sized input: the eager few-token path against the compiled one
        torch.testing.assert_close(compiled(x[:1, :1]), moe(x[:1, :1]))
