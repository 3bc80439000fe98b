#!/usr/bin/env bash
# GPU readiness check (issue 14, item 8), <= 8 minutes on a CUDA machine, one verdict line at the end.
#
#   bash benchmarks/gpu_check.sh                  # find or install a CUDA torch, then run the checks
#   bash benchmarks/gpu_check.sh --no-install     # run the checks with $PYTHON (default .venv/bin/python)
#
# A CUDA machine usually comes with a CUDA build of torch: when $GPU_CHECK_PYTHON (default python3)
# sees a CUDA device, that Python is used as it is and nothing is installed into it. hybridlm runs
# from src/, and what it lacks (its dependencies, then mamba_ssm and causal_conv1d) is installed
# without dependencies into $GPU_CHECK_VENV-site when a package index is reachable; on a machine
# with no network the kernels are reported as not tried and missing dependencies are named.
# Otherwise it makes $GPU_CHECK_VENV (default .venv-gpu) and installs torch ($TORCH_SPEC; PyPI's Linux
# wheels are CUDA builds; PIP_EXTRA='--index-url ...' picks another CUDA version), this package with
# its test extras, then mamba_ssm (MAMBA_KEEP_CUDA_BUILD=TRUE, so its Mamba-1 kernel is built) and
# causal_conv1d when they install within the time left; a failed kernel install is reported and the
# checks run on the torch path. Then benchmarks/gpu_check.py on --device $GPU_CHECK_DEVICE (cuda; auto
# with --no-install): CUDA parity against the CPU float64 reference (fp32, bf16 autocast with fp32
# states, cached decoding) and a short speed table. Exit code 0 on PASS or SKIPPED.
set -uo pipefail

BUDGET=${GPU_CHECK_BUDGET:-480}  # seconds for everything
VENV=${GPU_CHECK_VENV:-.venv-gpu}
CUDA_PYTHON=${GPU_CHECK_PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
PIP_EXTRA=${PIP_EXTRA:-}
INSTALL=1
for arg in "$@"; do
    case "$arg" in
        --no-install) INSTALL=0 ;;
        *) echo "GPU CHECK: FAIL (unknown argument $arg; use --no-install or nothing)"; exit 2 ;;
    esac
done
DEVICE=${GPU_CHECK_DEVICE:-$([ "$INSTALL" = 1 ] && echo cuda || echo auto)}
cd "$(dirname "$0")/.." || exit 2
left() { echo $((BUDGET - SECONDS)); }
within_budget() {  # "$@" under the seconds left; status 124 when none are
    local seconds
    seconds=$(left)
    [ "$seconds" -gt 0 ] || return 124
    timeout -k 5 "$seconds" "$@"
}
PIP_QUIET=(-q --disable-pip-version-check --no-input --timeout 10 --retries 1)
notes=()

cuda_torch() {  # prints "torch VERSION, CUDA VERSION" when Python $1 has a torch that sees a CUDA device
    command -v "$1" >/dev/null 2>&1 && timeout -k 5 120 "$1" -c \
        'import torch; assert torch.cuda.is_available(); print(f"torch {torch.__version__}, CUDA {torch.version.cuda}")' \
        2>/dev/null
}

index_reachable() {  # pip run by Python $1 fetches one small wheel from the package index within 30 s
    local probe status
    probe=$(mktemp -d)
    # shellcheck disable=SC2086
    timeout -k 5 30 "$1" -m pip download "${PIP_QUIET[@]}" --timeout 5 --retries 0 --no-deps -d "$probe" \
        $PIP_EXTRA setuptools >/dev/null 2>&1
    status=$?
    rm -rf "$probe"
    return "$status"
}

missing_modules() {  # the pip names of what Python $1 cannot import: hybridlm's dependencies, or $2 (kernels)
    "$1" - "${2:-}" <<'EOF'
import importlib, sys
wanted = {"numpy": "numpy", "safetensors": "safetensors", "tokenizers": "tokenizers", "yaml": "pyyaml",
          "tqdm": "tqdm", "numba": "numba llvmlite"}
if sys.argv[1] == "kernels":  # what mamba_ssm's and causal_conv1d's wheels need beside torch and triton
    wanted = {"einops": "einops", "transformers": "transformers", "packaging": "packaging", "ninja": "ninja"}
missing = []
for module, name in wanted.items():
    try:
        importlib.import_module(module)
    except Exception:
        missing.append(name)
print(" ".join(missing))
EOF
}

install_kernels() {  # "$@": the pip install command; mamba_ssm and causal_conv1d, as the time left allows
    local package spare
    for package in mamba_ssm causal_conv1d; do
        if "$PYTHON" -c "import $package" >/dev/null 2>&1; then
            notes+=("$package already installed")
            continue
        fi
        spare=$(( $(left) - 240 ))  # keep 4 minutes for the checks themselves
        if [ "$spare" -le 0 ]; then
            notes+=("$package not tried (no time left)")
            continue
        fi
        # shellcheck disable=SC2086
        if MAMBA_KEEP_CUDA_BUILD=TRUE timeout -k 5 "$spare" "$@" --no-build-isolation "$package" $PIP_EXTRA \
            >"/tmp/gpu_check_$package.log" 2>&1; then
            notes+=("$package installed")
        else
            notes+=("$package not installable here (log: /tmp/gpu_check_$package.log)")
        fi
    done
}

if [ "$INSTALL" = 1 ]; then
    if ! command -v nvidia-smi >/dev/null 2>&1 || ! timeout -k 5 30 nvidia-smi -L >/dev/null 2>&1; then
        echo "GPU CHECK: SKIPPED (no NVIDIA GPU: nvidia-smi finds none; nothing installed)"
        exit 0
    fi
    timeout -k 5 30 nvidia-smi -L
    if found=$(cuda_torch "$CUDA_PYTHON"); then
        PYTHON=$CUDA_PYTHON
        SITE="$VENV-site"
        [ "${SITE#/}" != "$SITE" ] || SITE="$PWD/$SITE"
        export PYTHONPATH="$PWD/src:$SITE${PYTHONPATH:+:$PYTHONPATH}"
        echo "using $CUDA_PYTHON as it is ($found); hybridlm from src/"
        missing=$(missing_modules "$PYTHON")
        if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
            notes+=("$PYTHON has no pip: nothing installed${missing:+ (it lacks $missing)}")
        elif index_reachable "$PYTHON"; then
            pip_target=("$PYTHON" -m pip install "${PIP_QUIET[@]}" --no-deps --target "$SITE")
            # shellcheck disable=SC2086
            [ -z "$missing" ] || within_budget "${pip_target[@]}" $missing $PIP_EXTRA \
                || { echo "GPU CHECK: FAIL (installing $missing into $SITE failed or ran out of time)"; exit 1; }
            kernel_needs=$(missing_modules "$PYTHON" kernels)
            # shellcheck disable=SC2086
            [ -z "$kernel_needs" ] || within_budget "${pip_target[@]}" $kernel_needs $PIP_EXTRA >/dev/null 2>&1 \
                || notes+=("installing $kernel_needs (for the kernels) failed")
            install_kernels "${pip_target[@]}"
        else
            [ -z "$missing" ] || notes+=("$PYTHON lacks $missing and no package index is reachable")
            notes+=("mamba_ssm and causal_conv1d not tried (no package index reachable; the torch path is checked)")
        fi
    else
        PYTHON="$VENV/bin/python"
        [ -x "$PYTHON" ] || python3 -m venv "$VENV" || { echo "GPU CHECK: FAIL (cannot create $VENV)"; exit 1; }
        index_reachable "$PYTHON" || {
            echo "GPU CHECK: FAIL (no CUDA torch in $CUDA_PYTHON, and no package index is reachable to install $TORCH_SPEC)"
            exit 1
        }
        # shellcheck disable=SC2086
        within_budget "$VENV/bin/pip" install "${PIP_QUIET[@]}" "$TORCH_SPEC" $PIP_EXTRA \
            || { echo "GPU CHECK: FAIL (installing $TORCH_SPEC failed or ran out of time)"; exit 1; }
        # shellcheck disable=SC2086
        within_budget "$VENV/bin/pip" install "${PIP_QUIET[@]}" -e ".[dev]" -c constraints.txt $PIP_EXTRA \
            || { echo "GPU CHECK: FAIL (installing hybridlm[dev] failed or ran out of time)"; exit 1; }
        install_kernels "$VENV/bin/pip" install "${PIP_QUIET[@]}"
    fi
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
# gpu_check.py's verdict is its last "GPU CHECK:" line; it is printed again last when something followed
# it, and replaced by FAIL when the checks hang, crash or exit with an error after it
log=$(mktemp)
PYTHONUNBUFFERED=1 timeout -k 5 "$((remaining - 10))" "$PYTHON" benchmarks/gpu_check.py --device "$DEVICE" \
    --budget "$((remaining - 90))" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
verdict=$(grep '^GPU CHECK: ' "$log" | tail -n 1)
last_line=$(tail -n 1 "$log")
rm -f "$log"
if [ "$status" = 124 ] || [ "$status" = 137 ]; then
    echo "GPU CHECK: FAIL (the checks did not finish within the ${BUDGET} s budget)"
    exit 1
elif [ -z "$verdict" ]; then
    echo "GPU CHECK: FAIL (benchmarks/gpu_check.py stopped with status $status before its verdict; its output is above)"
    exit 1
elif [ "$status" != 0 ] && [ "${verdict#GPU CHECK: FAIL}" = "$verdict" ]; then
    echo "GPU CHECK: FAIL (benchmarks/gpu_check.py exited with status $status after its verdict: ${verdict#GPU CHECK: })"
    exit 1
fi
[ "$last_line" = "$verdict" ] || echo "$verdict"
exit "$status"
