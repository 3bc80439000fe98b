"""benchmarks/gpu_check.sh (issue 14, item 8): valid bash, and its Python part run with the CUDA
checks skipped (the same parity checks on CPU: numba kernels against float64 references)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def run_script(*args, **env):
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env={**os.environ, **env}, timeout=300
    )


def test_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def test_unknown_argument_is_refused():
    result = run_script("--fast")
    assert result.returncode == 2 and result.stdout.splitlines()[-1].startswith("GPU CHECK: FAIL (unknown argument")


def test_a_missing_python_still_gets_a_verdict():
    result = run_script("--no-install", PYTHON="/nonexistent/python")
    assert result.returncode == 1 and result.stdout.splitlines()[-1].startswith("GPU CHECK: FAIL (no Python at")


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="would install the CUDA wheels")
def test_without_a_gpu_nothing_is_installed():
    result = run_script(GPU_CHECK_VENV=str(ROOT / ".venv-gpu-test-never-made"))
    assert result.returncode == 0 and result.stdout.startswith("GPU CHECK: SKIPPED (no NVIDIA GPU")
    assert not (ROOT / ".venv-gpu-test-never-made").exists()


def test_parity_harness_runs_on_cpu_and_gives_one_verdict():
    result = run_script("--no-install", PYTHON=sys.executable, HYBRIDLM_KERNELS="cpu")
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    assert lines[0].startswith("machine: ")
    assert lines[-1] == "GPU CHECK: SKIPPED (no CUDA device; the harness ran on CPU: 24/24 parity checks passed)"
    assert sum(line.startswith("ok   ") for line in lines) == 24
    assert sum(line.startswith("GPU CHECK") for line in lines) == 1
