#!/usr/bin/env bash
# One call for everything GPU-related, inside a time budget (sections: see bench/suite.py).
# Usage: bash bench/gpu_suite.sh [OUT_DIR] [--budget SECONDS] [more python -m bench.suite flags]
#   OUT_DIR: default $OUT, else bench/results/suite.   --budget: suite seconds, default 420.
# The suite keeps to the budget itself (each section checks the time left before it starts and
# long ones between their parts). The `timeout` below is only a last-resort guard at budget + 60 s
# against a hang; its SIGTERM makes the suite save what it has before exiting.
# Needs python3 with torch >= 2.11 and triton >= 3.6. Wheels for missing pure-Python packages
# (e.g. fire, see bench/README.md) may be carried in .whl/; they are installed into /tmp/site first.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/results/suite}"
if [[ $# -gt 0 && "$1" != -* ]]; then
    out="$1"
    shift
fi
budget=420
args=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --budget) budget="${2:?--budget needs a number of seconds}"; shift 2 ;;
        --budget=*) budget="${1#--budget=}"; shift ;;
        *) args+=("$1"); shift ;;
    esac
done
if ! [[ "$budget" =~ ^[0-9]+([.][0-9]+)?$ ]]; then
    echo "gpu_suite.sh: error: --budget must be a number of seconds, got '$budget'" >&2
    exit 2
fi
mkdir -p "$out"
py="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" >/dev/null; then
    if "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl; then
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "gpu_suite.sh: the wheels in .whl/ did not install; continuing without them" >&2
    fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export TRITON_INTERPRET=0
# One inductor cache for the whole call: later compiled variants and the profile reuse earlier kernels.
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-/tmp/fastcifar-inductor}"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv 2>/dev/null | tee "$out/nvidia-smi.txt"
guard=$(( ${budget%.*} + 60 ))
timeout --kill-after=20 "$guard" "$py" -m bench.suite --out "$out" --budget "$budget" "${args[@]}" 2>&1 | tee "$out/suite.log"
exit "${PIPESTATUS[0]}"
