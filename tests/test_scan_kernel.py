"""The Mamba-1 scan's vector kernel (ops/simd.py, selective_scan_cpu) against selective_scan_ref, and its floor loop."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numba import njit

from hybridlm.bench import scan_floor
from hybridlm.ops import dispatch, simd
from hybridlm.ops.selective_scan import selective_scan_ref

from .test_kernels import assert_kernel_matches, selective_scan_inputs


@njit
def _exp2_all(u, out):
    for i in range(0, u.size, simd.LANES):
        simd.store(out, i, simd.exp2(simd.load(u, i)))


@njit(fastmath=True)  # what the kernels use: the rounding must survive fast-math reassociation
def _exp2_all_fast(u, out):
    for i in range(0, u.size, simd.LANES):
        simd.store(out, i, simd.exp2(simd.load(u, i)))


@njit(fastmath=True)
def _silu_all(z, out):
    for i in range(0, z.size, simd.LANES):
        simd.store(out, i, simd.silu(simd.load(z, i)))


@pytest.mark.parametrize("kernel", [_exp2_all, _exp2_all_fast])
def test_exp2_is_accurate_to_2e7_relative(kernel):
    generator = np.random.default_rng(0)
    u = np.concatenate(
        [
            np.float32([0.0, -0.5, 0.5, -1e-8, -126.0, -125.5, 126.0, 127.0, -0.49999997, -0.50000006]),
            np.linspace(-126, 127, 100_000, dtype=np.float32),
            generator.uniform(-2, 0, 100_006).astype(np.float32),
        ]
    )
    out = np.empty_like(u)
    kernel(u, out)
    relative = np.abs(out / np.exp2(u.astype(np.float64)) - 1)
    assert relative.max() <= 2e-7
    assert out[0] == 1.0  # a decay of exactly 1 where dt A = 0: no state grows by an ulp a step


def test_exp2_clamps_below_the_smallest_normal():
    u = np.float32([-126.5, -127, -200, -1e30] * 4)
    out = np.empty_like(u)
    _exp2_all_fast(u, out)
    assert np.all(out == np.float32(2.0**-126))


def test_silu_matches_torch_to_the_arguments_rounding():
    z = np.concatenate([np.linspace(-120, 120, 4000, dtype=np.float32), np.float32([0, -0.0, 1e-30, -1e-30] * 4)])
    out = np.empty_like(z)
    _silu_all(z, out)
    expected = F.silu(torch.from_numpy(z).double()).numpy()
    # e^-z = 2^(-z log2 e): the product's rounding costs |z| ulps; below -87 e^-z is clamped (error < 2e-36)
    bound = 2e-7 * np.maximum(1.0, np.abs(z)) * np.abs(expected) + 2e-36
    assert np.all(np.abs(out - expected) <= bound)


def _numba_scan(x, dt, A, B, C, D=None, z=None, initial_state=None):
    with dispatch.kernels("cpu"):
        return dispatch.selective_scan(x, dt, A, B, C, D, z, initial_state)


def _reference_scan(x, dt, A, B, C, D=None, z=None, initial_state=None):
    y, final_state = selective_scan_ref(x, dt, A, B, C, D, initial_state)
    return (y if z is None else y * F.silu(z)), final_state


# odd shapes: length 1, a chunk and a bit (checkpoints), n not a multiple of 8, d odd, groups whose width
# is not a multiple of the 16 lanes (partial blocks), batch > 1
SHAPES = [
    (1, 1, 3, 1, 1),
    (2, 1, 17, 5, 1),
    (2, 130, 37, 12, 1),
    (3, 70, 48, 16, 3),
    (2, 65, 6, 3, 3),
    (1, 90, 40, 7, 2),
]


@pytest.mark.parametrize("batch, length, channels, d_state, groups", SHAPES)
def test_scan_matches_reference_with_gate_skip_and_state(batch, length, channels, d_state, groups):
    torch.manual_seed(length + channels)
    inputs = selective_scan_inputs(batch, length, channels, d_state, groups)
    assert_kernel_matches(_numba_scan, _reference_scan, inputs)


@pytest.mark.parametrize("skip, gate, state", [(False, False, False), (True, False, True), (False, True, False)])
def test_scan_matches_reference_without_optional_inputs(skip, gate, state):
    torch.manual_seed(3)
    x, dt, A, B, C, D, z, h0 = selective_scan_inputs(2, 100, 21, 6, 1)

    def call(scan):
        return lambda x, dt, A, B, C, *rest: scan(
            x, dt, A, B, C, D if skip else None, z if gate else None, h0 if state else None
        )

    assert_kernel_matches(call(_numba_scan), call(_reference_scan), [x, dt, A, B, C])


def test_scan_forward_without_autograd_matches_reference():
    torch.manual_seed(4)
    inputs = selective_scan_inputs(2, 300, 33, 16, 1)
    with torch.no_grad():
        out, final_state = _numba_scan(*inputs)
        expected_out, expected_state = _reference_scan(*inputs)
    assert torch.allclose(out, expected_out, rtol=1e-5, atol=1e-5)
    assert torch.allclose(final_state, expected_state, rtol=1e-5, atol=1e-5)


def test_undecayed_state_is_an_exact_running_sum():
    """A = 0 gives a decay of exactly 1: the final state is the sum of dt x B over 5000 steps."""
    torch.manual_seed(5)
    x, dt, A, B, C, D, z, h0 = selective_scan_inputs(1, 5000, 16, 4, 1)
    with torch.no_grad():
        _, final_state = _numba_scan(x, dt, torch.zeros_like(A), B, C)
    expected = torch.einsum("bld,bln->bdn", (dt * x).double(), B[:, :, 0].double())
    assert torch.allclose(final_state.double(), expected, rtol=1e-4, atol=1e-3)


def test_floor_loop_runs_the_declared_instruction_mix():
    """The hottest basic block (a label to its jump) of the floor loop holds exactly 15 vector ALU
    instructions per state: the mix the floor is defined by, nothing hoisted or added."""
    scan_floor._floor_run(64)()  # compile
    assembly = next(iter(scan_floor._floor_loop.inspect_asm().values()))
    counts, current = [], None
    for line in assembly.splitlines():
        mnemonic = line.split()[0] if line.split() else ""
        if line.startswith(".LBB"):
            current = 0
        elif current is not None and mnemonic.startswith("j"):
            counts.append(current)
            current = None
        elif current is not None and mnemonic.startswith(("vfmadd", "vmulps", "vaddps", "vsubps", "vmaxps", "vpslld")):
            current += 1
    assert max(counts) == scan_floor.INSTRUCTIONS * scan_floor.STATES


def test_floor_rows_report_the_ratio():
    (row,) = scan_floor.floor_rows([16], batch=1, d_inner=32, d_state=16, repeats=1)
    assert row.ours > 0 and row.baseline > 0 and row.notes["x_floor"] == pytest.approx(row.ours / row.baseline)


def test_forward_inner_loop_runs_on_full_width_vectors():
    """The forward's per-block loop (`_block_steps`) uses zmm registers on AVX-512 (ymm pairs on AVX2)
    for its FMAs, and the kernel calls it instead of inlining its own copy: checked in the assembly."""
    from hybridlm.ops import selective_scan_cpu

    forward = njit(fastmath=True, error_model="numpy")(selective_scan_cpu._forward)
    f32 = np.float32
    tokens, channels, d_state = np.zeros((1, 4, 32), f32), 32, 16
    arrays = [tokens, tokens, np.zeros((d_state, channels), f32), np.zeros((1, 4, 1, d_state), f32)]
    arrays += [np.zeros((1, 4, 1, d_state), f32), np.zeros(channels, f32), tokens, True]
    arrays += [
        np.zeros((1, d_state, channels), f32),
        64,
        1,
        np.zeros_like(tokens),
        np.zeros((1, d_state, channels), f32),
    ]
    forward(*arrays, np.zeros((1, 1, d_state, channels), f32), True)
    steps = njit(fastmath=True, error_model="numpy")(selective_scan_cpu._block_steps.py_func)  # uncached: inspectable
    rows, rows_bc, states = np.zeros(128, f32), np.zeros(4 * d_state, f32), np.zeros(d_state * 16, f32)

    @njit
    def four_steps(rows, out, rows_bc, states):  # a vector argument cannot come from Python
        steps(
            rows,
            rows,
            rows,
            True,
            out,
            0,
            16,
            16,
            4,
            rows_bc,
            rows_bc,
            0,
            d_state,
            states,
            states,
            0,
            simd.splat(f32(1)),
            d_state,
        )

    four_steps(rows, rows.copy(), rows_bc, states)
    assembly = next(iter(steps.inspect_asm().values()))
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            register = "zmm" if " avx512f " in cpuinfo.read() else "ymm"
    except OSError:
        pytest.skip("no /proc/cpuinfo to read the ISA from")
    fma_lines = [line for line in assembly.splitlines() if line.strip().startswith("vfmadd")]
    assert any(register in line for line in fma_lines)
    assert "_block_steps" in next(iter(forward.inspect_asm().values()))


# time blocks (TIME_BLOCK_CHUNKS * CHUNK = 256 tokens) crossed once and several times, ending mid-block and on
# a block's edge, with partial blocks of 16 lanes, groups and batch > 1
@pytest.mark.parametrize(
    "batch, length, channels, d_state, groups", [(2, 300, 40, 16, 2), (1, 769, 35, 5, 1), (3, 512, 16, 3, 1)]
)
def test_scan_across_time_blocks_matches_reference(batch, length, channels, d_state, groups):
    torch.manual_seed(length)
    inputs = selective_scan_inputs(batch, length, channels, d_state, groups)
    inputs[1] = inputs[1] * 0.1  # slow decays: the state carried from one time block into the next matters
    assert_kernel_matches(_numba_scan, _reference_scan, inputs)


def test_forward_gives_the_same_bits_for_any_split_of_the_blocks():
    """Jobs split a group's blocks of 16 channels between threads (`splits`); each channel's arithmetic is
    the same whichever job runs it, so out, final state and checkpoints agree exactly."""
    from hybridlm.ops import selective_scan_cpu as kernel

    torch.manual_seed(6)
    x, dt, A, B, C, D, z, h0 = selective_scan_inputs(2, 600, 120, 7, 2)
    results = []
    for splits in (1, 2, 3, 4, 9):
        out, final_state = torch.empty(2, 600, 120), torch.empty(2, 7, 120)
        checkpoints = torch.empty(2, -(-600 // kernel.CHUNK), 7, 120)
        arrays = [t.numpy() for t in (x, dt)] + [kernel._log2e_channels_last(A)] + [t.numpy() for t in (B, C, D, z)]
        arrays += [True, kernel._channels_last(h0), kernel.CHUNK, splits, out.numpy(), final_state.numpy()]
        kernel._forward_kernel.serial(*arrays, checkpoints.numpy(), True)
        results.append((out, final_state, checkpoints))
    for result in results[1:]:
        assert all(torch.equal(got, expected) for got, expected in zip(result, results[0]))
    expected_out, expected_state = _reference_scan(x, dt, A, B, C, D, z, h0)
    assert torch.allclose(results[0][0], expected_out, rtol=1e-5, atol=1e-5)
    assert torch.allclose(results[0][1].transpose(1, 2), expected_state, rtol=1e-5, atol=1e-5)
