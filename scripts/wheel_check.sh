#!/usr/bin/env bash
# The package as a technician installs it, outside the checkout: build the sdist, the
# wheel from the sdist (what `python -m build` does), install the wheel with the
# provision extra into a clean venv in a temp dir, and from there run the emulator,
# deploy and enroll against an emulated node (scripts/wheel_check.py checks the
# outcomes). pip may use the machine's pip cache; versions come from the constraints.
# Usage: scripts/wheel_check.sh   (exit 0 = all held; about a minute with a warm cache)
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
PY="${PYTHON:-python3}"           # the venv's base interpreter, not the dev venv
BUILD_PY="${BUILD_PY:-$repo/.venv/bin/python}"  # has setuptools and wheel (setup.sh)
work="$(mktemp -d "${TMPDIR:-/tmp}/citysense-wheel.XXXXXX")"
trap 'rm -rf "$work"' EXIT
pipq=(-m pip -q --disable-pip-version-check)

echo "wheel_check: sdist and wheel in $work"
# from a copy without build products: setuptools would reuse a stale *.egg-info/SOURCES.txt
mkdir "$work/src" "$work/dist"
tar -C "$repo" -c --exclude=.git --exclude=.venv --exclude=.cache --exclude=build \
    --exclude=dist --exclude='*.egg-info' --exclude=__pycache__ --exclude='.*_cache' . \
    | tar -C "$work/src" -x
sdist="$(cd "$work/src" && "$BUILD_PY" -c 'import sys; from setuptools import build_meta as b; print(b.build_sdist(sys.argv[1]))' "$work/dist" | tail -n 1)"
rm -rf "$work/src"
tar -xzf "$work/dist/$sdist" -C "$work"
"$BUILD_PY" "${pipq[@]}" wheel --no-deps --no-build-isolation -w "$work/dist" "$work/${sdist%.tar.gz}" 2> >(grep -v '^WARNING: Location' >&2)
wheel="$(ls "$work"/dist/citysense-*.whl)"
rm -rf "$work/${sdist%.tar.gz}"

echo "wheel_check: clean venv, pip install '$(basename "$wheel")[provision]'"
"$PY" -m venv "$work/venv"
"$work/venv/bin/python" "${pipq[@]}" install -c "$repo/requirements/constraints.txt" \
    "${wheel}[provision]" 2> >(grep -v '^WARNING: Location' >&2)

echo "wheel_check: emulator, deploy, enroll, a record from the node"
cd "$work"
env -u CITYSENSE_FIRMWARE -u PYTHONPATH "$work/venv/bin/python" "$repo/scripts/wheel_check.py" "$repo" "$work"
