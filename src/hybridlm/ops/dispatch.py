"""Which implementation runs each recurrence: chosen once per process, logged once, overridable.

    HYBRIDLM_KERNELS unset   the best available for each device (numba on CPU, mamba_ssm on CUDA)
    HYBRIDLM_KERNELS=reference   plain PyTorch everywhere (the tested oracles in ops/*.py)
    HYBRIDLM_KERNELS=cpu     numba kernels for CPU tensors (an error without numba); PyTorch on CUDA
    HYBRIDLM_KERNELS=cuda    mamba_ssm / causal_conv1d for CUDA tensors (an error without them);
                             PyTorch on CPU

Every function here has the signature and result of its reference. float64 inputs always take
the reference (the kernels compute in float32), and so does any call a CUDA kernel does not cover.
Without gradients the numba forward runs directly, skipping autograd's bookkeeping: that matters
when decoding one token at a time.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.hooks import RemovableHandle

from ..errors import ConfigError
from . import cuda_kernels
from .causal_conv import causal_conv1d_ref, conv_state_after
from .fftconv import STATE_DTYPE as MODAL_STATE_DTYPE
from .fftconv import modal_recurrence_ref
from .linear_scan import rglru_scan_ref
from .selective_scan import selective_scan_ref
from .ssd import gated_rms_norm_ref, ssd_chunked, ssd_ref

ENV_VAR = "HYBRIDLM_KERNELS"
CHOICES = ("reference", "cpu", "cuda")
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KernelChoice:
    cpu: str  # "numba" or "reference"
    cuda: str  # "mamba_ssm" or "reference"


@functools.cache
def kernel_choice() -> KernelChoice:
    """Read HYBRIDLM_KERNELS and probe the optional packages, once per process."""
    requested = os.environ.get(ENV_VAR, "").strip().lower()
    if requested and requested not in CHOICES:
        raise ConfigError(
            f"{ENV_VAR}={requested!r} is not one of {', '.join(CHOICES)}; unset it to choose automatically"
        )
    has_numba = importlib.util.find_spec("numba") is not None
    if requested == "cpu" and not has_numba:
        raise ConfigError(f"{ENV_VAR}=cpu needs numba, a dependency of hybridlm: pip install numba")
    probe_cuda = requested == "cuda" or (not requested and torch.cuda.is_available())
    has_cuda_kernels = probe_cuda and cuda_kernels.available()
    if requested == "cuda" and not has_cuda_kernels:
        raise ConfigError(f"{ENV_VAR}=cuda needs mamba_ssm built for this GPU: pip install mamba-ssm causal-conv1d")
    choice = KernelChoice(
        cpu="numba" if has_numba and requested in ("", "cpu") else "reference",
        cuda="mamba_ssm" if has_cuda_kernels and requested in ("", "cuda") else "reference",
    )
    logger.info("scan kernels: CPU -> %s, CUDA -> %s (%s=%s)", choice.cpu, choice.cuda, ENV_VAR, requested or "auto")
    return choice


@contextlib.contextmanager
def kernels(choice: str):
    """Run the block with HYBRIDLM_KERNELS=choice ("" = automatic), then restore the previous choice:
    benchmarks and tests compare kernels with their references in one process, on the same weights."""
    previous = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = choice
    kernel_choice.cache_clear()
    try:
        kernel_choice()
        yield
    finally:
        if previous is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = previous
        kernel_choice.cache_clear()


def backend_for(tensor: torch.Tensor) -> str:
    """ "numba", "mamba_ssm" or "reference" for a call whose main input is `tensor`."""
    if tensor.dtype == torch.float64 or tensor.device.type not in ("cpu", "cuda"):
        return "reference"
    return _backend_for_device(tensor.device.type)


def _backend_for_device(device_type: str) -> str:
    """The process's choice for a device type; torch.compile bakes it in instead of tracing the
    probe and its one log line (a graph break each)."""
    return getattr(kernel_choice(), device_type)


# what `@torch.compiler.assume_constant_result` sets, without that decorator's import of
# torch._dynamo (1.4-1.7 s of every CLI call); tests/test_compile.py counts the graph breaks
_backend_for_device._dynamo_marked_constant = True


def _use_custom_op(*tensors) -> bool:
    """The kernels' torch custom ops (ops/custom_ops.py) under autograd or torch.compile; eager calls
    without gradients skip the op dispatch (a decoding step makes dozens)."""
    return _needs_autograd(*tensors) or torch.compiler.is_compiling()


def _needs_autograd(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def selective_scan(x, dt, A, B, C, D=None, z=None, initial_state=None):
    """Mamba-1 scan, then the gate: out = (C.h + D x) * SiLU(z) (b, l, d) in x's dtype, final state
    (b, d, n) fp32. Shapes as `selective_scan_ref`; z (b, l, d) or None (no gate)."""
    backend = backend_for(x)
    if backend == "mamba_ssm":
        result = cuda_kernels.selective_scan(x, dt, A, B, C, D, z, initial_state)
        if result is not None:
            return result[0].to(x.dtype), result[1].float()
    if backend == "numba":
        from . import custom_ops
        from .selective_scan_cpu import selective_scan_forward

        batch, _, channels = x.shape
        if initial_state is None:
            initial_state = x.new_zeros(batch, channels, A.shape[1], dtype=torch.float32)
        D = x.new_zeros(channels) if D is None else D
        gate = x.new_empty(0, 0, 0) if z is None else z
        if _use_custom_op(x, dt, A, B, C, D, z, initial_state):
            out, final_state, _ = custom_ops.selective_scan(x, dt, A, B, C, D, gate, initial_state)
        else:
            out, final_state, _ = selective_scan_forward(x, dt, A, B, C, D, gate, initial_state)
        return out.to(x.dtype), final_state
    y, final_state = selective_scan_ref(x, dt, A, B, C, D, initial_state)
    return (y if z is None else y * F.silu(z)), final_state


def mamba_decode_step(x_in, z, conv_state, ssm_state, weights: dict):
    """One Mamba-1 token (conv, projections, scan, gate) in one numba call, updating the states in place:
    y (b, 1, d_in), or None where it does not apply (another backend, more than one token, autograd
    on, torch.compile tracing, or states that are not contiguous float32); the caller then runs its
    layer code. `weights`: the tensors `ops.mamba_step_cpu.mamba_decode_step` names, by keyword."""
    if torch.compiler.is_compiling() or x_in.shape[1] != 1 or torch.is_grad_enabled() or backend_for(x_in) != "numba":
        return None
    if not all(t.dtype == torch.float32 and t.is_contiguous() for t in (conv_state, ssm_state)):
        return None
    from .mamba_step_cpu import mamba_decode_step as fused_step

    return fused_step(x_in, z, conv_state, ssm_state, **weights)


def rglru_scan(x, gate_i, gate_r, log_a_scale, reset, initial_state=None):
    """RG-LRU recurrence: all states (b, l, d) and the last (b, d), fp32. Shapes as `rglru_scan_ref`."""
    if backend_for(x) != "numba":
        return rglru_scan_ref(x, gate_i, gate_r, log_a_scale, reset, initial_state)
    from . import custom_ops
    from .linear_scan_cpu import rglru_scan_forward

    if initial_state is None:
        initial_state = x.new_zeros(x.shape[0], x.shape[2], dtype=torch.float32)
    if _use_custom_op(x, gate_i, gate_r, log_a_scale, initial_state):
        return custom_ops.rglru_scan(x, gate_i, gate_r, log_a_scale, reset, initial_state)
    states = rglru_scan_forward(x, gate_i, gate_r, log_a_scale, reset, initial_state)
    return states, (states[:, -1] if states.shape[1] else initial_state.float())


def modal_recurrence(u, poles, residue, initial_state=None):
    """Hyena's modal recurrence: y (b, l, d) in u's dtype and the final state (b, d, m) complex128."""
    if backend_for(u) != "numba":
        return modal_recurrence_ref(u, poles, residue, initial_state)
    from . import custom_ops
    from .modal_cpu import modal_recurrence_forward

    if initial_state is None:
        initial_state = torch.zeros(u.shape[0], *poles.shape, dtype=MODAL_STATE_DTYPE, device=u.device)
    if _use_custom_op(u, poles, residue, initial_state):
        y, final_state, _ = custom_ops.modal_recurrence(u, poles, residue, initial_state)
    else:
        y, final_state, _ = modal_recurrence_forward(u, poles, residue, initial_state)
    return y.to(u.dtype), final_state


def causal_conv1d(x, weight, bias=None, state=None, silu: bool = False):
    """Depthwise causal conv (then SiLU if `silu`): y (b, l, c) in x's dtype and the new window
    (b, c, k-1). Shapes as `causal_conv1d_ref`; state None starts from zeros."""
    backend = backend_for(x)
    y = None
    if backend == "mamba_ssm":
        y = cuda_kernels.causal_conv1d(x, weight, bias, state, silu)
    elif backend == "numba":
        from . import custom_ops
        from .causal_conv_cpu import causal_conv1d_forward

        if _use_custom_op(x, weight, bias, state):
            y = custom_ops.causal_conv1d(x, weight, bias, state, silu).to(x.dtype)
        else:
            y = causal_conv1d_forward(x, weight, bias, state, silu).to(x.dtype)
    if y is None:
        y = causal_conv1d_ref(x, weight, bias, state, silu)
    return y, conv_state_after(x, state, weight.shape[-1])


def ssd(x, dt, A, B, C, D=None, initial_state=None, chunk_size: int = 64):
    """Mamba-2 SSD: y (b, l, h, p) in x's dtype and the final state (b, h, p, n) fp32. Shapes as
    `ssd.ssd_ref`.

    On CPU the numba recurrence (ssd_cpu.py) beats the chunked matmul form at every length measured
    here; the reference backend keeps the chunked form (the recurrence itself for one token: chunking
    would pad it to a whole chunk). CUDA uses mamba_ssm's Triton."""
    backend = backend_for(x)
    if backend == "numba":
        from . import custom_ops
        from .ssd_cpu import ssd_forward

        batch, _, heads, head_dim = x.shape
        if initial_state is None:
            initial_state = x.new_zeros(batch, heads, head_dim, B.shape[3], dtype=torch.float32)
        D = x.new_zeros(heads) if D is None else D
        if _use_custom_op(x, dt, A, B, C, D, initial_state):
            y, final_state, _ = custom_ops.ssd(x, dt, A, B, C, D, initial_state)
        else:
            y, final_state, _ = ssd_forward(x, dt, A, B, C, D, initial_state)
        return y.to(x.dtype), final_state
    if x.shape[1] == 1:
        return ssd_ref(x, dt, A, B, C, D, initial_state)
    if backend == "mamba_ssm":
        y, final_state = cuda_kernels.ssd(x, dt, A, B, C, D, initial_state, chunk_size)
        return y, final_state.float()
    return ssd_chunked(x, dt, A, B, C, D, initial_state, chunk_size=chunk_size)


def rglru_gated(x, y_pre, lru_weights: dict, log_a_scale, reset, initial_state, activation: str):
    """The recurrent block's core in one kernel: the gates i, r from x (block-diagonal), the RG-LRU,
    then out = h * act(y_pre): (out (b, l, d) fp32, final state (b, d) fp32), or None where no kernel
    applies (the caller runs its layer code). `lru_weights`: input_gate_weight, input_gate_bias,
    recurrent_gate_weight, recurrent_gate_bias by keyword, as `RGLRU` holds them."""
    if backend_for(x) != "numba":
        return None
    from . import custom_ops
    from .rglru_gated_cpu import rglru_gated_forward

    if initial_state is None:
        initial_state = x.new_zeros(x.shape[0], x.shape[2], dtype=torch.float32)
    weights = [lru_weights[name] for name in RGLRU_WEIGHTS]
    if _use_custom_op(x, y_pre, *weights, log_a_scale, initial_state):
        out, final_state, _, _ = custom_ops.rglru_gated(
            x, y_pre, *weights, log_a_scale, reset, initial_state, activation
        )
    else:
        out, final_state, _, _ = rglru_gated_forward(x, y_pre, *weights, log_a_scale, reset, initial_state, activation)
    return out, final_state


RGLRU_WEIGHTS = ("input_gate_weight", "input_gate_bias", "recurrent_gate_weight", "recurrent_gate_bias")


def rglru_decode_step(u, positions, conv_state, rnn_state, weights: dict, c: float, activation: str):
    """One token through Griffin's recurrent block (linears, conv, gates, recurrence, times act(y),
    output linear) in one numba call, updating the states in place: out (b, 1, d_model) fp32, or
    None where it does not apply (another backend, more than one token, autograd on, states not
    contiguous float32, or under torch.compile, which traces the layer code instead).
    `weights`: the tensors `ops.rglru_step_cpu.STEP_WEIGHTS` names."""
    if backend_for(u) != "numba" or u.shape[1] != 1 or torch.is_grad_enabled() or torch.compiler.is_compiling():
        return None
    if not all(t.dtype == torch.float32 and t.is_contiguous() for t in (conv_state, rnn_state)):
        return None
    from .rglru_step_cpu import rglru_decode_step as fused_step

    return fused_step(u, positions, conv_state, rnn_state, weights, c, activation)


def fused_decode_applies(x: torch.Tensor, *modules) -> bool:
    """Whether a fused CPU decoding step (ops/decode_cpu.py, ops/mamba_step_cpu.py) may replace a
    pre-normed sub-layer's eager ops for x (b, 1, d): numba chosen for x, one float32 token, no
    autograd and no tracing, and no forward hooks on `modules` or any module inside them (probes,
    profilers and hook-based adapters on a mixer's linears see them run)."""
    return x.shape[1] == 1 and x.dtype == torch.float32 and x.is_cpu and fused_decode_allowed(*modules)


def fused_decode_allowed(*modules) -> bool:
    """`fused_decode_applies` but for the input: numba chosen, no autograd and no tracing, no forward
    hooks on `modules` or inside them."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling():  # cheapest first: this runs per sub-layer
        return False
    return kernel_choice().cpu == "numba" and not forward_hooked(*modules)


def forward_hooked(*modules) -> bool:
    """Whether a global forward (pre-)hook is set, or one on `modules` or any module inside them:
    a fused step replacing their forwards must then stand aside, so that the hooks see them run.

    A tree found without hooks is not walked again (~490 modules for a small jamba, most of the
    Python of a decoded token with its caches cold) until a hook handle is made anywhere
    (`RemovableHandle.next_id` moves for every `register_*hook`) or a module is registered."""
    hooks = torch.nn.modules.module
    if hooks._global_forward_hooks or hooks._global_forward_pre_hooks:
        return True
    from .decode_cpu import generation, module_tree

    stamp = (RemovableHandle.next_id, generation())
    for module in modules:
        if _UNHOOKED.get(module) == stamp:
            continue
        if any(m._forward_hooks or m._forward_pre_hooks for m in module_tree(module)):
            return True
        _UNHOOKED[module] = stamp
    return False


_UNHOOKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> stamp it was found unhooked at


def mamba2_decode_step(projected, conv_state, ssm_state, weights: dict):
    """One Mamba-2 token (conv, dt, SSD update, gated RMSNorm) in one numba call, updating the states
    in place: the norm's output (b, 1, d_in), or None where it does not apply (another backend, more
    than one token, autograd on, torch.compile tracing, or states that are not contiguous float32); the
    caller then runs its layer code. `weights`: the tensors `ops.mamba2_step_cpu.mamba2_decode_step`
    names, by keyword."""
    if (
        torch.compiler.is_compiling()
        or projected.shape[1] != 1
        or torch.is_grad_enabled()
        or backend_for(projected) != "numba"
    ):
        return None
    if not all(t.dtype == torch.float32 and t.is_contiguous() for t in (conv_state, ssm_state)):
        return None
    from .mamba2_step_cpu import mamba2_decode_step as fused_step

    return fused_step(projected, conv_state, ssm_state, **weights)


def gated_rms_norm(y, z, weight, n_groups: int, eps: float):
    """Mamba-2's RMSNorm_g(y * SiLU(z)) * weight (..., d) in y's dtype. Shapes as `ssd.gated_rms_norm_ref`."""
    if backend_for(y) != "numba":
        return gated_rms_norm_ref(y, z, weight, n_groups, eps)
    from . import custom_ops
    from .gated_norm_cpu import gated_rms_norm_forward

    if _use_custom_op(y, z, weight):
        return custom_ops.gated_rms_norm(y, z, weight, n_groups, eps).to(y.dtype)
    return gated_rms_norm_forward(y, z, weight, n_groups, eps).to(y.dtype)


def ssd_mixer(projected, weights: dict, n_groups: int, dt_limit: tuple[float, float], eps: float):
    """The Mamba-2 mixer between its projections (conv, dt, SSD from zero states, gated norm) in one
    op whose backward writes in_proj's gradient in one buffer (ops/ssd_mixer_cpu.py): the norm's
    output (b, l, d_in) fp32, or None where it does not apply (another backend); the caller runs its
    layer code then. `weights`: conv_weight, conv_bias, dt_bias, A_log, D, norm_weight by keyword."""
    if backend_for(projected) != "numba":
        return None
    from . import custom_ops
    from .ssd_mixer_cpu import ssd_mixer_forward

    tensors = [weights[name] for name in ("conv_weight", "conv_bias", "dt_bias", "A_log", "D", "norm_weight")]
    options = (n_groups, float(dt_limit[0]), float(dt_limit[1]), float(eps))
    if _use_custom_op(projected, *tensors):
        return custom_ops.ssd_mixer(projected, *tensors, *options)[0]
    return ssd_mixer_forward(projected, *tensors, *options, keep=False)[0]
