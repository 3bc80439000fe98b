"""Blocked sliding-window attention (ops/sliding_window.py) equals the dense masked softmax, in values
and gradients, and is what a windowed layer runs on a long uncached sequence."""

import pytest
import torch
import torch.nn.functional as F

from hybridlm import HybridLM
from hybridlm.layers.attention import attention_mask
from hybridlm.ops.sliding_window import sliding_window_attention

from .helpers import tiny_config


def dense_reference(q, k, v, window, scale):
    positions = torch.arange(q.shape[2]).unsqueeze(0)
    k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
    mask = attention_mask(positions, positions, window)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


@pytest.mark.parametrize(
    "batch, heads, kv_heads, length, window",
    [(1, 2, 2, 100, 16), (2, 4, 1, 257, 7), (1, 2, 1, 64, 32), (1, 2, 2, 300, 40), (1, 1, 1, 33, 1)],
)
def test_blocked_equals_dense_masked_attention(batch, heads, kv_heads, length, window):
    torch.manual_seed(0)
    q = torch.randn(batch, heads, length, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(batch, kv_heads, length, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(batch, kv_heads, length, 8, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(batch, heads, length, 8, dtype=torch.float64)
    outputs = []
    for attend in (dense_reference, sliding_window_attention):
        out = attend(q, k, v, window, 0.3)
        grads = torch.autograd.grad((out * weights).sum(), (q, k, v))
        outputs.append((out, grads))
    (expected, expected_grads), (out, grads) = outputs
    torch.testing.assert_close(out, expected)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad)


def test_windowed_layer_on_a_long_sequence_equals_chunked_cached_prefill():
    """The uncached forward (blocked) against prefill through the ring cache (dense masks)."""
    torch.manual_seed(0)
    model = HybridLM(tiny_config(pattern="L F L F", attention={"window": 8})).eval()
    tokens = torch.randint(0, 50, (2, 150))
    with torch.no_grad():
        full = model(tokens)
        cache = model.allocate_cache(2)
        chunked = torch.cat([model(tokens[:, i : i + 16], cache=cache) for i in range(0, 150, 16)], dim=1)
    torch.testing.assert_close(full, chunked, rtol=1e-4, atol=1e-5)
