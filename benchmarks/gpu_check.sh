#!/usr/bin/env bash
# GPU readiness check (issue 14, item 8), <= 8 minutes on a CUDA machine, one verdict line at the end.
#
#   bash benchmarks/gpu_check.sh                  # make .venv-gpu, install the CUDA wheels, run the checks
#   bash benchmarks/gpu_check.sh --no-install     # run the checks with $PYTHON (default .venv/bin/python)
#
# Installs torch ($TORCH_SPEC, PyPI's Linux wheels are CUDA builds; pass PIP_EXTRA='--index-url ...'
# for another CUDA version), this package with its test extras, then mamba_ssm (with
# MAMBA_KEEP_CUDA_BUILD=TRUE so its Mamba-1 kernel is built) and causal_conv1d when they install
# within the time left; a failed kernel install is reported and the checks run on the torch path.
# Then benchmarks/gpu_check.py: CUDA parity against the CPU float64 reference (fp32, bf16 autocast
# with fp32 states, cached decoding) and a short speed table. Exit code 0 on PASS or SKIPPED.
set -uo pipefail

BUDGET=${GPU_CHECK_BUDGET:-480}  # seconds for everything
VENV=${GPU_CHECK_VENV:-.venv-gpu}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
PIP_EXTRA=${PIP_EXTRA:-}
INSTALL=1
for arg in "$@"; do
    case "$arg" in
        --no-install) INSTALL=0 ;;
        *) echo "GPU CHECK: FAIL (unknown argument $arg; use --no-install or nothing)"; exit 2 ;;
    esac
done
cd "$(dirname "$0")/.." || exit 2
left() { echo $((BUDGET - SECONDS)); }
notes=()

if [ "$INSTALL" = 1 ]; then
    PYTHON="$VENV/bin/python"
    if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
        echo "GPU CHECK: SKIPPED (no NVIDIA GPU: nvidia-smi finds none; nothing installed)"
        exit 0
    fi
    nvidia-smi -L
    [ -x "$PYTHON" ] || python3 -m venv "$VENV" || { echo "GPU CHECK: FAIL (cannot create $VENV)"; exit 1; }
    # shellcheck disable=SC2086
    timeout "$(left)" "$VENV/bin/pip" install -q "$TORCH_SPEC" $PIP_EXTRA \
        || { echo "GPU CHECK: FAIL (installing $TORCH_SPEC failed or ran out of time)"; exit 1; }
    # shellcheck disable=SC2086
    timeout "$(left)" "$VENV/bin/pip" install -q -e ".[dev]" -c constraints.txt $PIP_EXTRA \
        || { echo "GPU CHECK: FAIL (installing hybridlm[dev] failed or ran out of time)"; exit 1; }
    for package in mamba_ssm causal_conv1d; do
        spare=$(( $(left) - 240 ))  # keep 4 minutes for the checks themselves
        if [ "$spare" -le 0 ]; then
            notes+=("$package not tried (no time left)")
            continue
        fi
        if MAMBA_KEEP_CUDA_BUILD=TRUE timeout "$spare" "$VENV/bin/pip" install -q --no-build-isolation "$package" \
            >"/tmp/gpu_check_$package.log" 2>&1; then
            notes+=("$package installed")
        else
            notes+=("$package not installable here (log: /tmp/gpu_check_$package.log)")
        fi
    done
else
    PYTHON=${PYTHON:-.venv/bin/python}
    command -v "$PYTHON" >/dev/null 2>&1 \
        || { echo "GPU CHECK: FAIL (no Python at $PYTHON: set PYTHON=, or run without --no-install)"; exit 1; }
fi

[ "${#notes[@]}" -gt 0 ] && printf '%s\n' "${notes[@]}"
remaining=$(left)
if [ "$remaining" -le 30 ]; then
    echo "GPU CHECK: FAIL (the ${BUDGET} s budget was spent before the checks started)"
    exit 1
fi
# the last line gpu_check.py prints is the verdict; the timeout leaves 10 s to say so if it hangs
timeout "$((remaining - 10))" "$PYTHON" benchmarks/gpu_check.py --budget "$((remaining - 90))"
status=$?
if [ "$status" = 124 ]; then
    echo "GPU CHECK: FAIL (the checks did not finish within the ${BUDGET} s budget)"
fi
exit "$status"
