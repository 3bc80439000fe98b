"""What the numba kernels share: math that LLVM can vectorise, handing tensors to numba, and
choosing between a kernel's threaded and serial builds.

Kernels are cached on disk (`cache=True`) and numba invalidates a cached kernel only when its own
source file changes: after editing this file alone, delete ops/__pycache__/*.nbi and *.nbc.

numba calls libm's `expf` one element at a time (about 2.3 ns each here, and llvmlite has no SVML),
which would dominate a scan kernel. `exp_nonpositive` is the classic Cody-Waite reduction
exp(x) = 2^k exp(r), |r| <= ln2 / 2, with a degree-6 polynomial (Cephes `expf`) and 2^k built from
its IEEE-754 bits: pure arithmetic, so a loop over it vectorises (about 0.2 ns an element, at most
2e-7 relative error). Its argument is clamped at -87 (exp(-87) = 1.6e-38, the smallest normal
float32 order): a decay that small is zero for every purpose here.
"""

from __future__ import annotations

import ctypes
import os
import types as pytypes
import weakref

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import njit, types
from numba.core.errors import TypingError
from numba.extending import intrinsic, overload

PARALLEL_MIN_WORK = 1 << 18  # elements a call touches below which the serial build runs

# numba's default OpenMP layer loads the system libgomp next to torch's own: two pools whose idle
# workers spin, and torch's eager ops after a kernel ran 5-80x slower here (a Mamba decoding step
# 2-4.5 ms instead of 0.8 ms). The workqueue layer sleeps instead; it cannot nest parallel kernels
# or launch them from two Python threads at once, which these kernels never do. Set before any
# kernel runs; NUMBA_THREADING_LAYER, when set, wins.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)  # ln 2 split in two so that k * ln2 is exact in float32
_LN2_LO = np.float32(-2.12194440e-4)


@intrinsic
def _float32_from_bits(typingctx, bits):
    """Reinterpret an int32's bits as a float32 (no conversion)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@njit(inline="always", fastmath=True, error_model="numpy")
def exp_nonpositive(x):
    """exp(x) for float32 x <= 0."""
    x = max(x, np.float32(-87.0))
    k = np.floor(x * _LOG2E + np.float32(0.5))  # np.floor stays float32 and vectorises; math.floor returns an int
    r = x - k * _LN2_HI - k * _LN2_LO
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    return p * _float32_from_bits((np.int32(k) + np.int32(127)) << np.int32(23))


@njit(inline="always", fastmath=True, error_model="numpy")
def expm1_nonpositive(x):
    """exp(x) - 1 for float32 x <= 0, without the cancellation of exp(x) - 1 near 0 (a Taylor
    polynomial there, error < 2e-9 relative); both branches are arithmetic, so it vectorises."""
    if x > np.float32(-0.1):
        p = np.float32(1.0 / 720.0)
        p = p * x + np.float32(1.0 / 120.0)
        p = p * x + np.float32(1.0 / 24.0)
        p = p * x + np.float32(1.0 / 6.0)
        p = p * x + np.float32(0.5)
        return (p * x + np.float32(1.0)) * x
    return exp_nonpositive(x) - np.float32(1.0)


@njit(inline="always", fastmath=True, error_model="numpy")
def sigmoid(x):
    """1 / (1 + exp(-x)) from exp of a non-positive number only, so it cannot overflow."""
    e = exp_nonpositive(-abs(x))
    return np.float32(1.0) / (np.float32(1.0) + e) if x >= 0 else e / (np.float32(1.0) + e)


def copy_into(destination, source):
    """destination[...] = source for two 1-D or 2-D arrays (or views) of the same shape, which the
    caller guarantees: a check would raise, and a prange loop that can raise runs serially.

    Kernels call this instead of a slice assignment `a[:] = b`: numba compiles that one's shape
    mismatch message (string formatting) into the kernel, 1.5-4.6 s of a cold process's compile."""
    raise NotImplementedError  # replaced inside jitted code by the overload below


@overload(copy_into, inline="always")
def _copy_into(destination, source):
    if destination.ndim != source.ndim or destination.ndim not in (1, 2):
        raise TypingError("copy_into takes two 1-D or two 2-D arrays")
    if destination.ndim == 1:

        def copy_vector(destination, source):
            for i in range(source.shape[0]):
                destination[i] = source[i]

        return copy_vector

    def copy_matrix(destination, source):
        for i in range(source.shape[0]):
            for j in range(source.shape[1]):
                destination[i, j] = source[i, j]

    return copy_matrix


def as_array(t: torch.Tensor) -> np.ndarray:
    """A float32, C-contiguous numpy view of a CPU tensor (a copy only when needed), outside autograd.

    Written with cheap checks first: a decoding step converts a dozen small tensors per layer."""
    if t.dtype != torch.float32:
        t = t.float()
    if not t.is_contiguous():
        t = t.contiguous()
    if t.requires_grad:  # a parameter, or computed from one: view its memory without `numpy()`, which
        return _pointer_view(t.detach())  # pins a storage's size (FSDP2 frees and regrows parameters in place)
    return t.numpy()


def strided_view(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a float32 activation whose last dim is contiguous, without copying (x, B and C
    are column slices of the conv's output, z one of in_proj's); `as_array`'s contiguous copy otherwise.
    Not for parameters: `numpy()` pins a storage's size (see `as_array`)."""
    if t.dtype == torch.float32 and t.stride(-1) == 1:
        return t.detach().numpy()
    return as_array(t)


def _pointer_view(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a contiguous float32 CPU tensor through its data pointer; valid while `t` lives."""
    if t.numel() == 0:
        return np.empty(t.shape, dtype=np.float32)
    buffer = (ctypes.c_float * t.numel()).from_address(t.data_ptr())
    return np.ctypeslib.as_array(buffer).reshape(t.shape)


class Kernel:
    """A kernel written with `prange`, compiled twice (lazily, cached on disk): threaded, and serial.

    error_model="numpy" lets a float division by zero give inf instead of raising: without it numba
    guards every division with a branch and the loop around it does not vectorise (10x slower).

    Starting numba's threads costs ~45 us a call (workqueue layer) even for one thread, more than
    a decoding step's arithmetic, so calls touching fewer than PARALLEL_MIN_WORK elements, or made
    while torch uses one thread, run the serial build; the others use torch's thread count."""

    def __init__(self, fn):
        self.parallel = njit(parallel=True, fastmath=True, error_model="numpy", cache=True)(fn)
        # numba's disk cache is named after the function, not its flags: give the serial copy its own name
        serial = pytypes.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial", fn.__defaults__)
        serial.__qualname__ = fn.__qualname__ + "_serial"
        self.serial = njit(fastmath=True, error_model="numpy", cache=True)(serial)

    @staticmethod
    def threads(work: int) -> int:
        """The threads a call touching `work` elements runs on: torch's count, or 1 for small work."""
        return min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS) if work >= PARALLEL_MIN_WORK else 1

    def __call__(self, work: int, *args):
        threads = self.threads(work)
        if threads > 1:
            numba.set_num_threads(threads)
            return self.parallel(*args)
        return self.serial(*args)


_STEP_ARRAYS: dict = {}  # id(anchor weight) -> (key, the arrays a fused step reads); dropped with the anchor


def step_arrays(anchor: torch.Tensor, parameters, build, extra_key: tuple = ()) -> tuple:
    """The numpy arrays a fused decoding step reads, made by `build()` once and kept between tokens:
    handing a dozen parameters to numba costs more eager ops than the step itself. Rebuilt when one
    of `parameters` is replaced (new storage) or modified in place (its version moves), or
    `extra_key` changes; forgotten when `anchor` (one of the weights) is freed. Entries key by id:
    tensors compare elementwise."""
    key = (*extra_key, *((p.data_ptr(), p._version) for p in parameters if p is not None))
    cached = _STEP_ARRAYS.get(id(anchor))
    if cached is not None and cached[0] == key:
        return cached[1]
    if cached is None:
        weakref.finalize(anchor, _STEP_ARRAYS.pop, id(anchor), None)
    arrays = build()
    _STEP_ARRAYS[id(anchor)] = (key, arrays)
    return arrays
