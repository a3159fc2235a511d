#!/usr/bin/env bash
# One-time (idempotent) setup for a fresh Debian/Ubuntu machine with Python 3.11.
# Creates .venv with the pinned versions in requirements/constraints.txt, installs the
# firmware type stubs beside it, and (as root, or with sudo) the Debian packages the
# tests use. Usage: scripts/setup.sh [dev|demo]
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-dev}"
PY="${PYTHON:-python3}"

apt_install() {
    local missing=()
    local pkg
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then sudo="sudo -n"; else
            echo "setup: need root to install ${missing[*]} (apt-get); install them and re-run" >&2
            return 1
        fi
    fi
    echo "setup: apt-get install ${missing[*]}"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

if [ "$profile" = "dev" ]; then
    apt_install mosquitto socat systemd chromium postgresql
fi

if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -U "pip>=24" setuptools wheel
extra="$profile"
.venv/bin/python -m pip install -q --disable-pip-version-check \
    -c requirements/constraints.txt -e ".[$extra]"

if [ "$profile" = "dev" ]; then
    # ESP32 API stubs live apart from the venv so they never shadow CPython modules.
    stubs_ver="$(grep -E '^micropython-esp32-stubs==' requirements/constraints-firmware.txt)"
    if [ ! -f .cache/esp32-stubs/.installed ] || [ "$(cat .cache/esp32-stubs/.installed)" != "$stubs_ver" ]; then
        rm -rf .cache/esp32-stubs
        .venv/bin/python -m pip install -q --disable-pip-version-check \
            --target .cache/esp32-stubs -r requirements/constraints-firmware.txt
        echo "$stubs_ver" > .cache/esp32-stubs/.installed
    fi
fi
