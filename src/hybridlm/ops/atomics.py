"""Memory shared between threads inside numba kernels: atomic int64 slots, spin-wait hints, the
time-stamp counter, and an address turned back into an array or called as a function.

numba has no atomics on the CPU: a plain `box[i]` read in a loop may be hoisted out of it, and
plain stores may be reordered around each other. These intrinsics emit LLVM's atomic load (acquire),
store (release) and compare-exchange (acq_rel) on one int64 slot of a C-contiguous int64 array, so
a thread that reads a flag with `load_acquire` also sees every write made before the matching
`store_release`. `process_global(name)` is the address of a process-wide symbol registered with
llvmlite (`register_global`): unlike a module global array, which numba freezes into the compiled
code as a constant, it is looked up again when a cached kernel is loaded in a new process.

`spin_pause` and `cycles` are x86 instructions; elsewhere (SPINNING is False) they compile to nothing
and to 0, so that kernels holding them still compile, and ops/decode_worker.py never spins.
"""

from __future__ import annotations

import platform
import sys

import numpy as np
from llvmlite import binding, ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_I64 = ir.IntType(64)
SPINNING = platform.machine().lower() in ("x86_64", "amd64") and sys.platform in ("linux", "darwin")


def _slot(context, builder, array_type, array, index):
    return builder.gep(context.make_array(array_type)(context, builder, array).data, [index])


@intrinsic
def load_acquire(typingctx, array, index):
    """array[index] (int64), read once, before any read that follows it."""

    def codegen(context, builder, signature, args):
        return builder.load_atomic(_slot(context, builder, signature.args[0], *args), "acquire", 8)

    return types.int64(array, index), codegen


@intrinsic
def store_release(typingctx, array, index, value):
    """array[index] = value (int64), after every write that precedes it."""

    def codegen(context, builder, signature, args):
        value = context.cast(builder, args[2], signature.args[2], types.int64)
        builder.store_atomic(value, _slot(context, builder, signature.args[0], args[0], args[1]), "release", 8)
        return context.get_dummy_value()

    return types.none(array, index, value), codegen


@intrinsic
def compare_exchange(typingctx, array, index, expected, new):
    """Whether array[index] held `expected` and now holds `new`, in one atomic step."""

    def codegen(context, builder, signature, args):
        expected = context.cast(builder, args[2], signature.args[2], types.int64)
        new = context.cast(builder, args[3], signature.args[3], types.int64)
        slot = _slot(context, builder, signature.args[0], args[0], args[1])
        return builder.extract_value(builder.cmpxchg(slot, expected, new, "acq_rel", "acquire"), 1)

    return types.boolean(array, index, expected, new), codegen


@intrinsic
def spin_pause(typingctx):
    """The CPU's spin-wait hint (x86 `pause`): a waiting loop yields the core's issue slots."""

    def codegen(context, builder, signature, args):
        if SPINNING:
            function_type = ir.FunctionType(ir.VoidType(), [])
            builder.call(cgutils.get_or_insert_function(builder.module, function_type, "llvm.x86.sse2.pause"), [])
        return context.get_dummy_value()

    return types.none(), codegen


@intrinsic
def cycles(typingctx):
    """The time-stamp counter (llvm.readcyclecounter): a clock for spin limits inside a kernel."""

    def codegen(context, builder, signature, args):
        if not SPINNING:
            return ir.Constant(_I64, 0)
        function_type = ir.FunctionType(_I64, [])
        return builder.call(cgutils.get_or_insert_function(builder.module, function_type, "llvm.readcyclecounter"), [])

    return types.int64(), codegen


@intrinsic
def yield_core(typingctx):
    """sched_yield(): a thread that waits lets any other runnable thread on its core go first."""

    def codegen(context, builder, signature, args):
        function_type = ir.FunctionType(ir.IntType(32), [])
        builder.call(cgutils.get_or_insert_function(builder.module, function_type, "sched_yield"), [])
        return context.get_dummy_value()

    return types.none(), codegen


def _pointer_intrinsic(numba_type, llvm_type):
    @intrinsic
    def pointer(typingctx, address):
        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], llvm_type.as_pointer())

        return types.CPointer(numba_type)(address), codegen

    return pointer


float32_pointer = _pointer_intrinsic(types.float32, ir.FloatType())  # for numba.carray(address, shape)
int64_pointer = _pointer_intrinsic(types.int64, _I64)


@intrinsic
def call_by_address(typingctx, address, arguments):
    """Call the C function at `address` (int64) with the int64s of the tuple `arguments`, for nothing
    back. An indirect call cannot be inlined: every caller runs the very same machine code."""
    count = len(arguments)

    def codegen(context, builder, signature, args):
        function_type = ir.FunctionType(ir.VoidType(), [_I64] * count)
        function = builder.inttoptr(args[0], function_type.as_pointer())
        builder.call(function, [builder.extract_value(args[1], i) for i in range(count)])
        return context.get_dummy_value()

    return types.none(address, arguments), codegen


def register_global(name: str, array: np.ndarray) -> None:
    """Make `name` the address of `array` for every kernel that reads `process_global(name)`; the
    array must live as long as the process."""
    binding.add_symbol(name, array.ctypes.data)


def process_global(name: str):
    """An intrinsic returning the address (int64) registered as `name`."""

    @intrinsic
    def address(typingctx):
        def codegen(context, builder, signature, args):
            symbol = builder.module.globals.get(name)
            if symbol is None:
                symbol = ir.GlobalVariable(builder.module, _I64, name)
                symbol.linkage = "external"
            return builder.ptrtoint(symbol, _I64)

        return types.int64(), codegen

    return address
