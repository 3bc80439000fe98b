"""Grouped matrix product as a torch custom op: the MoE layer's experts in one traceable node.

Glossary: R rows (token, expert) pairs sorted by expert, E groups (experts), i in / o out features.

    out[r] = x[r] @ weight[e(r)]      e(r) the group of row r: rows group_ends[e-1] .. group_ends[e]-1

`torch.nn.functional.grouped_mm` computes this, but its fake (meta) implementation accepts only
bf16, so torch.compile cannot trace it in fp32, and torch before 2.8 lacks it. This op runs the
product group by group in eager PyTorch, gives its output shape to the tracer, and wires its
gradient (d x = grad @ weight^T per group, d weight[e] = x_e^T grad_e) to a second op. The row
counts per group depend on the routing, but no traced shape does.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.library import custom_op, register_autograd, register_fake


def _groups(group_ends: Tensor) -> list[tuple[int, int]]:
    ends = group_ends.tolist()
    return list(zip([0, *ends[:-1]], ends))


@custom_op("hybridlm::grouped_mm", mutates_args=())
def grouped_mm(x: Tensor, weight: Tensor, group_ends: Tensor) -> Tensor:
    """x (R, i), weight (E, i, o), group_ends (E,) int: the cumulative row counts -> (R, o)."""
    out = x.new_empty(x.shape[0], weight.shape[2])
    for (start, end), group_weight in zip(_groups(group_ends), weight.unbind(0)):
        torch.mm(x[start:end], group_weight, out=out[start:end])
    return out


@register_fake("hybridlm::grouped_mm")
def _(x, weight, group_ends):
    return x.new_empty(x.shape[0], weight.shape[2])


@custom_op("hybridlm::grouped_mm_weight_grad", mutates_args=())
def grouped_mm_weight_grad(x: Tensor, grad: Tensor, group_ends: Tensor) -> Tensor:
    """x (R, i), grad (R, o) -> (E, i, o): x_e^T grad_e per group (zero for a group without rows)."""
    weight_grad = x.new_empty(group_ends.shape[0], x.shape[1], grad.shape[1])
    for (start, end), group_grad in zip(_groups(group_ends), weight_grad.unbind(0)):
        torch.mm(x[start:end].t(), grad[start:end], out=group_grad)
    return weight_grad


@register_fake("hybridlm::grouped_mm_weight_grad")
def _(x, grad, group_ends):
    return x.new_empty(group_ends.shape[0], x.shape[1], grad.shape[1])


def _setup_context(ctx, inputs, output):
    x, weight, group_ends = inputs
    ctx.save_for_backward(x, weight, group_ends)


def _backward(ctx, grad):
    x, weight, group_ends = ctx.saved_tensors
    grad = grad.contiguous()
    x_grad = grouped_mm(grad, weight.transpose(1, 2).contiguous(), group_ends) if ctx.needs_input_grad[0] else None
    weight_grad = grouped_mm_weight_grad(x, grad, group_ends) if ctx.needs_input_grad[1] else None
    return x_grad, weight_grad, None


register_autograd("hybridlm::grouped_mm", _backward, setup_context=_setup_context)
