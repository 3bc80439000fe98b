"""A 16-lane float32 vector for numba kernels, so a kernel says its SIMD width instead of hoping for it.

numba's loop vectoriser picks the target's preferred width: 8 lanes (ymm) on AVX-512 Intel parts,
whose LLVM tuning prefers 256-bit vectors, and it vectorises only innermost loops, so a state
that should live in registers across time sits in memory. `vec_type` is an LLVM `<16 x float>`: LLVM
compiles it to one zmm register on AVX-512 and to two ymm registers on AVX2, with the same source.

Only generic LLVM operations are used (fadd, fmul, llvm.fma, select, shl, shufflevector,
llvm.prefetch), no x86 intrinsics, so a kernel built on it runs on any CPU numba targets. numba's
fastmath=True flags every float instruction of a kernel, these included; `exp2`'s rounding trick
is kept out of reach of reassociation by `fence`.

Loads and stores take a flat element offset into a C-contiguous float32 array and read 16
consecutive floats, unaligned, with no bounds check: callers keep them inside the array. numba's
disk cache tracks only a kernel's own source file: after editing this file alone, delete
ops/__pycache__/*.nbi and *.nbc.
"""

from __future__ import annotations

import operator

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.datamodel import models, register_default
from numba.extending import intrinsic, overload

LANES = 16
_VECTOR = ir.VectorType(ir.FloatType(), LANES)
_INTS = ir.VectorType(ir.IntType(32), LANES)


class VecType(types.Type):
    def __init__(self):
        super().__init__(name=f"float32x{LANES}")


vec_type = VecType()


@register_default(VecType)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VECTOR)


def _vector_pointer(context, builder, array_type, array, offset):
    data = context.make_array(array_type)(context, builder, array).data
    return builder.bitcast(builder.gep(data, [offset]), _VECTOR.as_pointer())


@intrinsic
def load(typingctx, array, offset):
    """array.flat[offset : offset + 16] as a vector."""

    def codegen(context, builder, signature, args):
        return builder.load(_vector_pointer(context, builder, signature.args[0], *args), align=4)

    return vec_type(array, offset), codegen


@intrinsic
def store(typingctx, array, offset, value):
    """array.flat[offset : offset + 16] = value."""

    def codegen(context, builder, signature, args):
        builder.store(args[2], _vector_pointer(context, builder, signature.args[0], args[0], args[1]), align=4)
        return context.get_dummy_value()

    return types.none(array, offset, value), codegen


@intrinsic
def prefetch(typingctx, array, offset):
    """Ask for the cache line holding array.flat[offset] (llvm.prefetch; never faults, so offset may
    lie past the array). For strided walks, e.g. one 64-byte row slice per token 2 KiB apart, which
    the hardware prefetchers do not follow."""

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        address = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        function_type = ir.FunctionType(ir.VoidType(), [address.type, i32, i32, i32])
        function = cgutils.get_or_insert_function(builder.module, function_type, "llvm.prefetch.p0")
        builder.call(function, [address, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.none(array, offset), codegen


@intrinsic
def splat(typingctx, scalar):
    """A vector holding `scalar` (a float32) in every lane."""

    def codegen(context, builder, signature, args):
        one = builder.insert_element(ir.Constant(_VECTOR, ir.Undefined), args[0], ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(one, one, ir.Constant(_INTS, [0] * LANES))

    return vec_type(types.float32), codegen


@intrinsic
def broadcast(typingctx, array, offset):
    """array.flat[offset] in every lane: one broadcast load, without the negative-index wrap that
    numba adds to `array[i]` for an i it cannot prove non-negative (four scalar instructions)."""

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        scalar = builder.load(builder.gep(data, [args[1]]), align=4)
        one = builder.insert_element(ir.Constant(_VECTOR, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(one, one, ir.Constant(_INTS, [0] * LANES))

    return vec_type(array, offset), codegen


def _binary(name):
    @intrinsic
    def op(typingctx, a, b):
        def codegen(context, builder, signature, args):
            return getattr(builder, name)(*args)

        return vec_type(vec_type, vec_type), codegen

    return op


add, sub, mul, div = _binary("fadd"), _binary("fsub"), _binary("fmul"), _binary("fdiv")


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c, one rounding (llvm.fma)."""

    def codegen(context, builder, signature, args):
        function_type = ir.FunctionType(_VECTOR, [_VECTOR] * 3)
        intrinsic_fma = cgutils.get_or_insert_function(builder.module, function_type, f"llvm.fma.v{LANES}f32")
        return builder.call(intrinsic_fma, args)

    return vec_type(vec_type, vec_type, vec_type), codegen


@intrinsic
def maximum(typingctx, a, b):
    """Lane-wise max(a, b) (b where either is NaN, like x86's maxps with a in the first slot)."""

    def codegen(context, builder, signature, args):
        return builder.select(builder.fcmp_ordered(">", args[0], args[1]), args[0], args[1])

    return vec_type(vec_type, vec_type), codegen


@intrinsic
def minimum(typingctx, a, b):
    """Lane-wise min(a, b)."""

    def codegen(context, builder, signature, args):
        return builder.select(builder.fcmp_ordered("<", args[0], args[1]), args[0], args[1])

    return vec_type(vec_type, vec_type), codegen


@intrinsic
def fence(typingctx, a):
    """a, unchanged, as a barrier that fast-math reassociation cannot look through (llvm.arithmetic.fence):
    numba's fastmath=True flags every float instruction of a kernel, inlined ones included."""

    def codegen(context, builder, signature, args):
        function_type = ir.FunctionType(_VECTOR, [_VECTOR])
        name = f"llvm.arithmetic.fence.v{LANES}f32"
        return builder.call(cgutils.get_or_insert_function(builder.module, function_type, name), args)

    return vec_type(vec_type), codegen


@intrinsic
def shifted_bits(typingctx, a):
    """The float vector whose bit pattern is a's shifted left by 23 (into the exponent field)."""

    def codegen(context, builder, signature, args):
        bits = builder.shl(builder.bitcast(args[0], _INTS), ir.Constant(_INTS, [23] * LANES))
        return builder.bitcast(bits, _VECTOR)

    return vec_type(vec_type), codegen


@intrinsic
def total(typingctx, a):
    """The sum of a's 16 lanes (a float32), by halving: 4 shuffles and 4 adds."""

    def codegen(context, builder, signature, args):
        value, width = args[0], LANES
        while width > 1:
            width //= 2
            upper = [width + (i % width) for i in range(LANES)]
            value = builder.fadd(value, builder.shuffle_vector(value, value, ir.Constant(_INTS, upper)))
        return builder.extract_element(value, ir.Constant(ir.IntType(32), 0))

    return types.float32(vec_type), codegen


def _butterfly_plan():
    """Shuffle masks that fold 16 vectors into one of their 16 lane sums, and the final lane order.

    Each level pairs the vectors up and keeps, per group of 2w lanes, the sum of its two halves
    of w: 8 + 4 + 2 + 1 = 15 (shuffle, shuffle, add) steps instead of 16 halvings of 8 steps."""
    levels, owners = [], [[v] * LANES for v in range(LANES)]  # owners[v][lane]: which input lane holds
    width = LANES // 2
    while width >= 1:
        low, high = [], []
        for group in range(LANES // (2 * width)):
            for side in (0, LANES):
                low += [side + group * 2 * width + i for i in range(width)]
                high += [side + group * 2 * width + width + i for i in range(width)]
        low, high = low[:LANES], high[:LANES]
        pairs = [(owners[2 * i] + owners[2 * i + 1]) for i in range(len(owners) // 2)]
        owners = [[pair[i] for i in low] for pair in pairs]
        levels.append((low, high))
        width //= 2
    order = [owners[0].index(v) for v in range(LANES)]
    return levels, order


@intrinsic
def lane_sums(typingctx, array, offset):
    """The vector whose lane i is the sum of array.flat[offset + 16 i : offset + 16 (i + 1)]: sixteen
    lane sums for 15 adds and 31 shuffles (a transpose-and-add butterfly), against 128 instructions
    for 16 separate `total`s."""
    levels, order = _butterfly_plan()

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        vectors = []
        for i in range(LANES):
            pointer = builder.gep(data, [builder.add(args[1], ir.Constant(args[1].type, i * LANES))])
            vectors.append(builder.load(builder.bitcast(pointer, _VECTOR.as_pointer()), align=4))
        for low, high in levels:
            low_mask, high_mask = ir.Constant(_INTS, low), ir.Constant(_INTS, high)
            vectors = [
                builder.fadd(builder.shuffle_vector(a, b, low_mask), builder.shuffle_vector(a, b, high_mask))
                for a, b in zip(vectors[0::2], vectors[1::2])
            ]
        return builder.shuffle_vector(vectors[0], vectors[0], ir.Constant(_INTS, order))

    return vec_type(array, offset), codegen


def _overload_operator(python_operator, vector_function):
    @overload(python_operator)
    def _vector_operator(a, b):
        if a is vec_type and b is vec_type:
            return lambda a, b: vector_function(a, b)


for _operator, _function in ((operator.add, add), (operator.sub, sub), (operator.mul, mul), (operator.truediv, div)):
    _overload_operator(_operator, _function)


# 2^f on [-1/2, 1/2]: 1 + f q(f), q of degree 4 fitted for minimax relative error (iteratively reweighted
# least squares in float64, 9e-8), then nudged by float32 ulps: at most 1.6e-7 relative evaluated in float32,
# and exactly 1 at f = 0 (a decay of 1 + 1 ulp would grow a state over a long sequence).
_EXP2_COEFFICIENTS = tuple(np.float32(c) for c in (
    1.0, 0.6931470036506653, 0.24022245407104492,
    0.05550733208656311, 0.009671512991189957, 0.001326472731307149,
))  # fmt: skip
_ROUNDER = np.float32(1.5 * 2**23 + 127)  # s = u + this: s's low mantissa bits hold round(u) + 127
_FLOOR = np.float32(-126.0)  # 2^-126: the smallest normal float32


@njit(inline="always")
def exp2(u):
    """2^u lane-wise for u <= 127 (lanes below -126 give 2^-126 instead of less), 1.6e-7 relative.

    u = k + f with k = round(u), |f| <= 1/2: adding 1.5 * 2^23 + 127 rounds u to an integer in the
    low mantissa bits (the FPU's own round-to-nearest), so shifting those bits left by 23 builds
    2^k's IEEE-754 pattern; 2^f is a degree-5 polynomial (Horner, 5 FMAs). 11 vector instructions
    with the clamp, against ~17 for numba_support's Cody-Waite `exp_nonpositive` (its integer
    conversion, bias and shift, and a second range-reduction step)."""
    u = maximum(u, splat(_FLOOR))
    shifted = fence(u + splat(_ROUNDER))
    f = u - fence(shifted - splat(_ROUNDER))
    p = splat(_EXP2_COEFFICIENTS[5])
    p = fma(p, f, splat(_EXP2_COEFFICIENTS[4]))
    p = fma(p, f, splat(_EXP2_COEFFICIENTS[3]))
    p = fma(p, f, splat(_EXP2_COEFFICIENTS[2]))
    p = fma(p, f, splat(_EXP2_COEFFICIENTS[1]))
    p = fma(p, f, splat(_EXP2_COEFFICIENTS[0]))
    return p * shifted_bits(shifted)


_LOG2E = np.float32(1.4426950408889634)
_CEILING = np.float32(126.0)


@njit(inline="always")
def sigmoid(z):
    """1 / (1 + e^-z) lane-wise, e^-z clamped as in `silu`."""
    one = splat(np.float32(1.0))
    return one / (one + exp2(minimum(z * splat(-_LOG2E), splat(_CEILING))))


@njit(inline="always")
def silu(z):
    """z * sigmoid(z) = z / (1 + e^-z) lane-wise; e^-z is clamped to [2^-126, 2^126], so the result is
    z itself above ~87 and -z e^z within 1e-36 below ~-87 (one division, like sigmoid's)."""
    u = minimum(z * splat(-_LOG2E), splat(_CEILING))
    return z / (splat(np.float32(1.0)) + exp2(u))
