"""benchmarks/gpu_check.sh (issue 14, item 8): valid bash, its choice of Python on a CUDA machine with
no network (played by a stand-in nvidia-smi and a Python that claims a CUDA torch), and its Python part
run with the CUDA checks skipped (the same parity checks on CPU: numba kernels against float64 references)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


UNREACHABLE_INDEX = "http://127.0.0.1:9/simple"  # port 9 (discard): pip's probe is refused at once

CUDA_PYTHON_STAND_IN = """#!/usr/bin/env bash
# claims a CUDA torch, reports $MISSING as missing, and plays gpu_check.py; anything else is the real Python
case "$1" in
    -c) [[ "$2" == *cuda.is_available* ]] && { echo "torch 2.11.0+cu130, CUDA 13.0"; exit 0; } ;;
    -) cat >/dev/null; echo "$MISSING"; exit 0 ;;
    benchmarks/gpu_check.py) echo "PYTHONPATH=$PYTHONPATH"; printf "$CHECK_OUTPUT"; exit "$CHECK_STATUS" ;;
esac
exec {real} "$@"
"""


def run_script(*args, **env):
    base = {name: value for name, value in os.environ.items() if name not in env.pop("WITHOUT", ())}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env={**base, **env}, timeout=300
    )


def offline_gpu_machine(tmp_path: Path, cuda_torch: bool) -> dict[str, str]:
    """Environment of a machine with an NVIDIA GPU, no package index, and (if cuda_torch) a Python
    whose torch sees the GPU."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text('#!/bin/sh\necho "GPU 0: NVIDIA H200 (stand-in)"\n')
    python = bin_dir / "python-cuda"
    python.write_text(CUDA_PYTHON_STAND_IN.replace("{real}", sys.executable))
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return {
        "WITHOUT": [name for name in os.environ if name.startswith("PIP_")],
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PIP_CONFIG_FILE": os.devnull,  # no config file's find-links or extra index (pip's documented switch)
        "PIP_INDEX_URL": UNREACHABLE_INDEX,
        "PIP_EXTRA": "",
        "GPU_CHECK_PYTHON": str(python) if cuda_torch else sys.executable,
        "GPU_CHECK_VENV": str(tmp_path / "venv"),
        "MISSING": "",
        "CHECK_OUTPUT": "GPU CHECK: PASS (stand-in)\\n",
        "CHECK_STATUS": "0",
    }


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


def test_an_installed_cuda_torch_is_used_as_it_is_without_a_network(tmp_path):
    result = run_script(**offline_gpu_machine(tmp_path, cuda_torch=True))
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    assert lines[:2] == [
        "GPU 0: NVIDIA H200 (stand-in)",
        f"using {tmp_path}/bin/python-cuda as it is (torch 2.11.0+cu130, CUDA 13.0); hybridlm from src/",
    ]
    assert "mamba_ssm and causal_conv1d not tried (no package index reachable; the torch path is checked)" in lines
    assert f"PYTHONPATH={ROOT}/src:{tmp_path}/venv-site" in lines
    assert lines[-1] == "GPU CHECK: PASS (stand-in)"
    assert not (tmp_path / "venv").exists() and not (tmp_path / "venv-site").exists()


def test_a_missing_dependency_without_a_network_is_named(tmp_path):
    result = run_script(**{**offline_gpu_machine(tmp_path, cuda_torch=True), "MISSING": "numba llvmlite"})
    assert result.returncode == 1
    assert result.stdout.splitlines()[-1] == (
        f"GPU CHECK: FAIL ({tmp_path}/bin/python-cuda lacks numba llvmlite and no package index is reachable: "
        "bring them as wheels)"
    )


def test_a_check_that_crashes_still_gets_a_verdict(tmp_path):
    crash = {"CHECK_OUTPUT": "Traceback (most recent call last):\\nImportError: stand-in\\n", "CHECK_STATUS": "1"}
    result = run_script(**{**offline_gpu_machine(tmp_path, cuda_torch=True), **crash})
    assert result.returncode == 1
    assert result.stdout.splitlines()[-2:] == [
        "ImportError: stand-in",
        "GPU CHECK: FAIL (benchmarks/gpu_check.py stopped with status 1 before its verdict; its output is above)",
    ]


def test_no_cuda_torch_and_no_network_is_one_line(tmp_path):
    result = run_script(**offline_gpu_machine(tmp_path, cuda_torch=False))
    assert result.returncode == 1
    assert result.stdout.splitlines()[-1] == (
        f"GPU CHECK: FAIL (no CUDA torch in {sys.executable}, and no package index is reachable to install "
        "torch==2.13.0)"
    )


def test_parity_harness_runs_on_cpu_and_gives_one_verdict():
    result = run_script("--no-install", PYTHON=sys.executable, HYBRIDLM_KERNELS="cpu")
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    assert lines[0].startswith("machine: ")
    assert lines[-1] == "GPU CHECK: SKIPPED (no CUDA device; the harness ran on CPU: 24/24 parity checks passed)"
    assert sum(line.startswith("ok   ") for line in lines) == 24
    assert sum(line.startswith("GPU CHECK") for line in lines) == 1
