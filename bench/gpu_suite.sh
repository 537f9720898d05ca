#!/usr/bin/env bash
# One call for everything GPU-related (see bench/suite.py for the sections).
# Usage: bash bench/gpu_suite.sh [OUT_DIR]      (default: $OUT, else bench/results/suite)
# Needs python3 with torch >= 2.11 and triton >= 3.6. Wheels for missing pure-Python packages
# (e.g. fire) may be carried in .whl/; they are installed into /tmp/site first.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-bench/results/suite}}"
mkdir -p "$out"
py="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export TRITON_INTERPRET=0
# One inductor cache for the whole call: the profile section reuses the train section's kernels.
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-/tmp/fastcifar-inductor}"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv 2>/dev/null | tee "$out/nvidia-smi.txt"
timeout "${SUITE_TIMEOUT:-540}" "$py" -m bench.suite --out "$out" "${@:2}" 2>&1 | tee "$out/suite.log"
exit "${PIPESTATUS[0]}"
