#!/usr/bin/env bash
# Idempotent set-up: system packages FFCV builds against, a virtual environment, the project.
# Usage: scripts/setup.sh [VENV_DIR]   (default .venv)
# Environment: SETUP_PYTHON  the interpreter that creates the venv (default python3);
#              SETUP_EXTRAS  the project's extras (default dev,analysis,cluster);
#              SETUP_PINS    extra requirements installed with the project, e.g. "torch==2.11.0".
set -euo pipefail
venv="${1:-.venv}"
python="${SETUP_PYTHON:-python3}"
extras="${SETUP_EXTRAS:-dev,analysis,cluster}"
read -r -a pins <<<"${SETUP_PINS:-}"
apt_pkgs=(libopencv-dev libturbojpeg0-dev pkg-config)

missing=()
for p in "${apt_pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: missing system packages: ${missing[*]}" >&2
        echo "setup: run as root: apt-get update && apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
    echo "setup: installing system packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating virtual environment in $venv ($("$python" --version))"
    "$python" -m venv "$venv"
    # pip's notes about this machine's local package folders are noise here; real failures still stop set -e.
    "$venv/bin/python" -m pip install -q --upgrade pip 2>&1 | { grep -v "^WARNING: Location" || true; }
fi
echo "setup: installing fastcifar and its dependencies (first time: a few minutes)"
log="$venv/setup-pip.log"
if ! "$venv/bin/python" -m pip install -e ".[$extras]" "${pins[@]}" >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" | tail -n 30 >&2
    echo "setup: pip install failed (full log: $log)" >&2
    exit 1
fi
"$venv/bin/python" -c "import importlib.metadata as m, platform, fastcifar, ffcv, torch, fire; print('setup: ok  python', platform.python_version(), ' torch', torch.__version__, ' numpy', m.version('numpy'), ' ffcv', m.version('ffcv'))"
touch "$venv/.installed"
