"""Fused CPU decoding steps for the dense sub-layers, and the weight views every fused step keeps.

Glossary: b batch (rows decoded together), d model width, o output features of one projection,
f MLP hidden width, V vocabulary.

Decoding one token is one matrix-vector product per weight matrix plus a few vector ops; done as
eager torch ops it pays ~1-15 us of dispatch per op (an fp32 `F.rms_norm` on a 48-vector costs
~14 us here), which at the tiny sizes is most of a step. Each kernel here does one pre-normed
sub-layer's dense work in one numba call:

    norm_project   RMSNorm(x) then [W_1 | W_2 | ...] x + b   (attention's q, k, v, then RoPE on q and k;
                                                             the LM head)
    mlp_step       W_down act(W_gate x_hat) * (W_up x_hat)    x_hat = RMSNorm(x)  (SwiGLU, or plain;
                   no norm for an MoE expert, whose input the MoE's pre-norm already normed)

`mlp_into`, `lora_mlp_into`, `lora_add`, `gemv_into` and `rms_norm_into` are inlined into other fused steps
(ops/mamba_step_cpu.py, ops/mamba2_step_cpu.py, ops/shared_step_cpu.py).

Merged projections read their input once, as one GEMV over the stacked rows, without a stacked
copy: the kernel walks each weight's own memory. `DecodeWeights` holds numpy views of the
parameters (so in-place updates, optimizer steps and `load_state_dict` copies are seen at once)
and is rebuilt when a parameter is replaced: a new storage (`p.data = ...`, `.to()`), a module or
parameter registered anywhere (`module.weight = ...`, `load_state_dict(assign=True)`), or an
in-place change of a weight it derives a copy from (its `_version`). Not seen: an in-place write
through `p.data` (`p.data.mul_(2)`), which leaves `p._version` alone; the derived copies (Mamba's
A and transposed dt_proj) then go stale. Write under `torch.no_grad()` instead (`p.mul_(2)`,
`p.copy_(...)`), as optimizers and `load_state_dict` do.
"""

from __future__ import annotations

import math
import weakref

import numpy as np
import torch
from numba import njit
from torch.nn.modules import module as torch_module

from . import gemv_split
from .numba_support import _pointer_view, copy_into, sigmoid

_GENERATION = [0]  # bumped whenever any module or parameter is registered: cached views may be stale


def _bump_generation(*_args) -> None:
    _GENERATION[0] += 1


torch_module.register_module_parameter_registration_hook(_bump_generation)
torch_module.register_module_module_registration_hook(_bump_generation)


_TREES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> (generation, its modules)


def module_tree(module) -> tuple:
    """`module` and every module under it (`module.modules()`), kept until a module is registered
    anywhere: a fused step that replaces a mixer's linears must see the hooks on those too."""
    entry = _TREES.get(module)
    if entry is None or entry[0] != _GENERATION[0]:
        entry = (_GENERATION[0], tuple(module.modules()))
        _TREES[module] = entry
    return entry[1]


class DecodeWeights:
    """Numpy views of `tensors` (float32, contiguous, CPU) plus arrays derived from `derived_from`;
    `fresh()` says whether they still describe the module's parameters."""

    def __init__(self, tensors: list, derived_from: tuple = ()):
        self.tensors = [t for t in tensors if t is not None]  # held: their memory cannot be reused
        self.pointers = [t.data_ptr() for t in self.tensors]
        self.derived_from = derived_from
        self.versions = [t._version for t in derived_from]
        self.generation = _GENERATION[0]

    def fresh(self) -> bool:
        return (
            self.generation == _GENERATION[0]
            and [t.data_ptr() for t in self.tensors] == self.pointers
            and [t._version for t in self.derived_from] == self.versions
        )


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> its step's weights


def generation() -> int:
    """A count that moves whenever a module or parameter is registered anywhere."""
    return _GENERATION[0]


def cached_entry(owner, build, norm=None) -> tuple | None:
    """(DecodeWeights, the step weights) of `owner` (and the `norm` before it) from `build(owner)`, a
    tuple whose first item is the DecodeWeights; None when the step does not apply (not kept). Kept
    until a parameter changes identity or storage, or another norm is asked for."""
    entry = _CACHE.get(owner)
    if entry is not None and entry[0] is norm and entry[1].fresh():
        return entry[1], entry[2]
    built = build(owner)
    if built is None:
        _CACHE.pop(owner, None)
        return None
    _CACHE[owner] = (norm, built[0], built[1:])
    return built[0], built[1:]


def cached_weights(owner, build, norm=None):
    """The step weights of `cached_entry`, or None."""
    entry = cached_entry(owner, build, norm)
    return None if entry is None else entry[1]


def weight_view(t: torch.Tensor | None) -> np.ndarray:
    """A numpy view of a float32 contiguous CPU tensor's memory (an empty array for None)."""
    if t is None:
        return np.zeros(0, np.float32)
    return _pointer_view(t.detach())


def viewable(*tensors) -> bool:
    """Whether every given tensor can be viewed in place (float32, contiguous, CPU)."""
    return all(
        t is None or (t.dtype == torch.float32 and t.is_contiguous() and t.device.type == "cpu") for t in tensors
    )


def norm_views(norm) -> tuple:
    """(weight view, eps, offset) of an RMSNorm: y = x_hat * (w + offset), offset 1 for Gemma's form;
    an empty weight for no norm."""
    if norm is None:
        return np.zeros(0, np.float32), np.float32(0.0), np.float32(0.0)
    return weight_view(norm.weight), np.float32(norm.eps), np.float32(1.0 if norm.offset else 0.0)


@njit(inline="always", fastmath=True, error_model="numpy")
def rms_norm_into(x, weight, eps, offset, out):
    """out (b, d) = x / sqrt(mean(x^2) + eps) * (weight + offset), row by row."""
    batch, width = x.shape
    for row in range(batch):
        mean_square = np.float32(0.0)
        for i in range(width):
            mean_square += x[row, i] * x[row, i]
        scale = np.float32(1.0) / np.sqrt(mean_square / np.float32(width) + eps)
        for i in range(width):
            out[row, i] = x[row, i] * scale * (weight[i] + offset)


@njit(inline="always", fastmath=True, error_model="numpy")
def gemv_into(weight, bias, x, out, column):
    """out[:, column : column + o] = x @ weight.T (+ bias); weight (o, i), x (b, i)."""
    gemv_rows(weight, bias, x, 0, out, column)


@njit(fastmath=True, error_model="numpy")
def gemv_rows(weight, bias, x, x0, out, column):
    """out[:, column : column + o] = x[:, x0 : x0 + i] @ weight.T (+ bias); weight (o, i) row-major,
    an empty bias for none (ops/gemv_split.py `gemv_range`). A matrix of SPLIT_MIN elements or more
    is split with the second core's worker while it serves (ops/decode_worker.py)."""
    rows, width = weight.shape
    if rows * width < gemv_split.SPLIT_MIN or not gemv_split.gemv_large(weight, bias, x, x0, out, column):
        gemv_split.gemv_range(weight, bias, x, x0, out, column, 0, rows)


@njit(fastmath=True, error_model="numpy", cache=True)
def _norm_project(x, norm_weight, eps, offset, weights, biases, out):
    normed = np.empty_like(x)
    rms_norm_into(x, norm_weight, eps, offset, normed)
    column = 0
    for index in range(len(weights)):
        gemv_into(weights[index], biases[index], normed, out, column)
        column += weights[index].shape[0]


@njit(fastmath=True, error_model="numpy", cache=True)
def _rope_in_place(out, positions, inv_freq, head_dim, heads):
    """Rotate-half RoPE (layers/rope.py) of the first `heads` heads of out (b, heads' * head_dim), row b
    at positions[b]: x1 cos - x2 sin, x2 cos + x1 sin over the first 2 * len(inv_freq) features."""
    half = inv_freq.shape[0]
    for row in range(out.shape[0]):
        position = np.float32(positions[row])
        for j in range(half):
            angle = position * inv_freq[j]
            cos, sin = np.cos(angle), np.sin(angle)
            for head in range(heads):
                first = head * head_dim + j
                a, b = out[row, first], out[row, first + half]
                out[row, first] = a * cos - b * sin
                out[row, first + half] = b * cos + a * sin


@njit(inline="always", fastmath=True, error_model="numpy")
def lora_add(down, up, x, out, column):
    """out[:, column : column + o] += (x @ down.T) @ up.T: a LoRA delta B (A x) (Hu et al. 2021, eq. 3),
    down = A (r, i), up = B (o, r), through the rank-r middle (no merged o x i matrix)."""
    batch, rank = x.shape[0], down.shape[0]
    low = np.empty((batch, rank), np.float32)
    gemv_into(down, np.zeros(0, np.float32), x, low, 0)
    for o in range(up.shape[0]):
        for row in range(batch):
            acc = np.float32(0.0)
            for r in range(rank):
                acc += up[o, r] * low[row, r]
            out[row, column + o] += acc


@njit(fastmath=True, error_model="numpy", cache=True)
def _mlp_step(x, norm_weight, eps, offset, activation, gate, gate_bias, up, up_bias, down, down_bias, out):
    normed = np.empty_like(x)
    if norm_weight.size:
        rms_norm_into(x, norm_weight, eps, offset, normed)
    else:  # an MoE expert: its input is already normed
        copy_into(normed, x)
    mlp_into(normed, activation, gate, gate_bias, up, up_bias, down, down_bias, out)


@njit(inline="always", fastmath=True, error_model="numpy")
def mlp_into(normed, activation, gate, gate_bias, up, up_bias, down, down_bias, out):
    """out (b, d) = W_down act(W_gate x) * (W_up x), or W_down act(W_up x) without a gate; x (b, d) normed."""
    no_adapter = np.zeros((0, 0), np.float32)
    lora_mlp_into(normed, activation, gate, gate_bias, up, up_bias, down, down_bias, no_adapter, no_adapter, out)


@njit(inline="always", fastmath=True, error_model="numpy")
def lora_mlp_into(normed, activation, gate, gate_bias, up, up_bias, down, down_bias, lora_down, lora_up, out):
    """`mlp_into` with a LoRA delta [g | u] = B (A x) added to [W_gate x | W_up x] when lora_down is not
    empty (gated MLPs; Zamba2's shared block, layers/mlp.py `gate_up_delta`)."""
    batch = normed.shape[0]
    hidden = up.shape[0]
    hidden_out = np.empty((batch, hidden), np.float32)
    if gate.size:  # gated: act(W_gate x) * (W_up x), both into one [gate | up] buffer
        gate_up = np.empty((batch, 2 * hidden), np.float32)
        gemv_into(gate, gate_bias, normed, gate_up, 0)
        gemv_into(up, up_bias, normed, gate_up, hidden)
        if lora_down.size:
            lora_add(lora_down, lora_up, normed, gate_up, 0)
        for row in range(batch):
            for i in range(hidden):
                hidden_out[row, i] = _activate(gate_up[row, i], activation) * gate_up[row, hidden + i]
    else:  # plain: act(W_up x)
        gemv_into(up, up_bias, normed, hidden_out, 0)
        for row in range(batch):
            for i in range(hidden):
                hidden_out[row, i] = _activate(hidden_out[row, i], activation)
    gemv_into(down, down_bias, hidden_out, out, 0)


ACTIVATION_CODES = {"silu": 0, "gelu_tanh": 1, "gelu": 2}  # the MLP activations `_mlp_step` computes
GELU_TANH_SCALE = np.float32(2.0 * np.sqrt(2.0 / np.pi))
SQRT_HALF = np.float32(np.sqrt(0.5))


@njit(inline="always", fastmath=True, error_model="numpy")
def _activate(v, activation):
    """SiLU v sigmoid(v) (code 0); tanh-approximated GeLU (code 1) in its sigmoid form
    0.5 v (1 + tanh(u)) = v sigmoid(2 u), u = sqrt(2 / pi) (v + 0.044715 v^3); exact GeLU (code 2,
    torch's default) 0.5 v (1 + erf(v / sqrt 2)) (Hendrycks & Gimpel 2016)."""
    if activation == 0:
        return v * sigmoid(v)
    if activation == 1:
        return v * sigmoid(GELU_TANH_SCALE * (v + np.float32(0.044715) * v * v * v))
    return np.float32(0.5) * v * (np.float32(1.0) + np.float32(math.erf(v * SQRT_HALF)))


@njit(fastmath=True, error_model="numpy", cache=True)
def _rms_norm(x, weight, eps, offset, out):
    rms_norm_into(x, weight, eps, offset, out)


def rms_norm(x: torch.Tensor, norm) -> torch.Tensor | None:
    """RMSNorm of one token x (b, 1, d) in one call; None unless its weight can be viewed in place."""
    if not viewable(norm.weight):
        return None
    batch = x.shape[0]
    out = np.empty((batch, x.shape[-1]), np.float32)
    _rms_norm(x.reshape(batch, -1).numpy(), *norm_views(norm), out)
    return torch.from_numpy(out).view(batch, 1, -1)


def norm_project(x: torch.Tensor, weights: tuple, rope=None) -> torch.Tensor:
    """x (b, 1, d) -> RMSNorm then the stacked projections, (b, 1, sum of o). `weights`: what
    `projection_weights` built. `rope` (positions (b, 1), inv_freq, head_dim, heads): rotate the
    first `heads` heads of the output in place (attention's queries and keys, stacked)."""
    norm_weight, eps, offset, matrices, biases, width = weights
    batch = x.shape[0]
    rows = np.empty((batch, width), np.float32)
    _norm_project(x.reshape(batch, -1).numpy(), norm_weight, eps, offset, matrices, biases, rows)
    if rope is not None:
        positions, inv_freq, head_dim, heads = rope
        _rope_in_place(rows, positions.reshape(batch).numpy(), inv_freq.numpy(), head_dim, heads)
    return torch.from_numpy(rows).view(batch, 1, width)


def conv_ssm_sublayer(kernel, u: torch.Tensor, conv_state, ssm_state, weights: tuple) -> torch.Tensor:
    """u (b, 1, d) -> out_proj of a conv + SSM mixer (Mamba, Mamba-2) applied to RMSNorm(u), (b, 1, d), by
    its fused `kernel`; the states (float32, contiguous) are updated in place. `weights`: the views
    before the conv state, before the SSM state, and of out_proj (ops/mamba*_step_cpu.py `sublayer_weights`)."""
    batch = u.shape[0]
    before_conv, before_ssm, projection = weights
    out = np.empty((batch, projection[0].shape[0]), np.float32)
    kernel(
        u.reshape(batch, -1).numpy(), *before_conv, conv_state.numpy(), *before_ssm, ssm_state.numpy(), *projection, out
    )
    return torch.from_numpy(out).view(batch, 1, -1)


def projection_weights(norm, linears) -> tuple | None:
    """DecodeWeights and the views `norm_project` takes for an RMSNorm and linears reading its output."""
    tensors = [norm.weight, *(p for linear in linears for p in (linear.weight, linear.bias))]
    has_bias = [linear.bias is not None for linear in linears]
    if not viewable(*tensors) or any(has_bias) != all(has_bias):
        return None
    matrices = tuple(weight_view(linear.weight) for linear in linears)
    biases = tuple(weight_view(linear.bias) for linear in linears)
    width = sum(linear.out_features for linear in linears)
    return (DecodeWeights(tensors), *norm_views(norm), matrices, biases, width)


def mlp_step(x: torch.Tensor, weights: tuple) -> torch.Tensor:
    """x (b, 1, d) -> the MLP of RMSNorm(x), (b, 1, d)."""
    batch = x.shape[0]
    out = np.empty((batch, weights[-2].shape[0]), np.float32)
    _mlp_step(x.reshape(batch, -1).numpy(), *weights, out)
    return torch.from_numpy(out).view(batch, 1, -1)


def mlp_weights(norm, mlp) -> tuple | None:
    """DecodeWeights and the views `mlp_step` takes (norm None: no norm); None unless the activation is
    one `_mlp_step` computes (ACTIVATION_CODES)."""
    gate, up, down = mlp.gate_proj, mlp.up_proj, mlp.down_proj
    linears = [linear for linear in (gate, up, down) if linear is not None]
    norm_weight = None if norm is None else norm.weight
    tensors = [norm_weight, *(p for linear in linears for p in (linear.weight, linear.bias))]
    if mlp.activation_name not in ACTIVATION_CODES or not viewable(*tensors):
        return None
    views = []
    for linear in (gate, up, down):  # no gate: an empty (0, 0) matrix, so the kernel types as for a gated one
        views += [np.zeros((0, 0), np.float32) if linear is None else weight_view(linear.weight)]
        views += [weight_view(None if linear is None else linear.bias)]
    return (DecodeWeights(tensors), *norm_views(norm), np.int64(ACTIVATION_CODES[mlp.activation_name]), *views)
