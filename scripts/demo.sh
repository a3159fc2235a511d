#!/usr/bin/env bash
# The README's demo command: installs what it needs (a venv; no apt packages, no broker)
# and runs citysense-demo. Extra arguments go to citysense-demo (e.g. --forever).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh demo
exec .venv/bin/citysense-demo "$@"
