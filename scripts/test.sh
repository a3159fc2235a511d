#!/usr/bin/env bash
# The README's test command: installs what it needs, then runs every check and test.
# Stages print a banner so a CI log shows where time goes.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONDONTWRITEBYTECODE=1

stage() { printf '\n=== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

stage "setup"
scripts/setup.sh dev
. .venv/bin/activate

stage "lint: ruff"
ruff check .

stage "types: mypy (strict: gateway, provisioning, emulator, citysense_lab, citysense_formats, cloud)"
mypy

stage "firmware: mpy-cross -march=xtensawin and type check against ESP32 stubs"
scripts/check_firmware.sh

stage "package: wheel installed outside the checkout (scripts/wheel_check.sh)"
scripts/wheel_check.sh

stage "tests: pytest (unit, firmware under micropython, whole-system)"
set +e
python -m pytest -q -p no:cacheprovider --durations=15 "$@"
rc=$?
set -e
if [ "$rc" -ne 0 ]; then
    echo "test.sh: pytest failed (exit $rc)" >&2
    exit "$rc"
fi

# The slow stage: the gateway as the systemd service on an emulated Raspberry Pi (arm64
# Debian under qemu-system-aarch64). About 5 minutes with its image cached, 15-20 cold.
# CI runs it; CITYSENSE_SKIP_QEMU=1 skips it on a developer's machine.
if [ "${CITYSENSE_SKIP_QEMU:-0}" = "1" ]; then
    stage "qemu: skipped (CITYSENSE_SKIP_QEMU=1)"
else
    stage "qemu: the gateway on an emulated Raspberry Pi (scripts/qemu_check.sh)"
    scripts/qemu_check.sh
fi
stage "done"
