#!/usr/bin/env bash
# The gateway on an emulated Raspberry Pi (arm64 Debian bookworm under
# qemu-system-aarch64, TCG) as the real systemd service, fed by an emulated node over a
# host pty, publishing to a Mosquitto on host loopback. Exit status non-zero on any failure.
#
# Installs what it needs on the host (root, no stdin), builds the image once into
# ${CITYSENSE_QEMU_CACHE:-/var/cache/citysense-qemu} (keyed by its inputs) and runs
# hil_tests/qemu/check.py. See docs/qemu.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONDONTWRITEBYTECODE=1
start=$(date +%s)

need=()
for pair in qemu-system-aarch64:qemu-system-arm qemu-img:qemu-utils \
    mmdebstrap:mmdebstrap arch-test:arch-test update-binfmts:binfmt-support \
    mke2fs:e2fsprogs cpio:cpio socat:socat /usr/sbin/mosquitto:mosquitto \
    /usr/libexec/qemu-binfmt/aarch64-binfmt-P:qemu-user-static; do
    cmd=${pair%%:*} pkg=${pair#*:}
    if [[ $cmd == /* ]]; then [[ -e $cmd ]] || need+=("$pkg"); else
        command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg"); fi
done
if ((${#need[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "qemu_check: missing host packages (${need[*]}); run as root to install them" >&2
        exit 1
    fi
    echo "qemu_check: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q </dev/null
    apt-get install -y -q --no-install-recommends "${need[@]}" </dev/null
fi
command -v qemu-system-aarch64 >/dev/null || {
    echo "qemu_check: qemu-system-aarch64 is not installable here: cannot run" >&2
    exit 1
}

# Foreign (arm64) binaries in the root filesystem build run under qemu-user.
if [[ ! -e /proc/sys/fs/binfmt_misc/register ]]; then
    mount binfmt_misc -t binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [[ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]]; then
    update-binfmts --enable qemu-aarch64
fi
[[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]] || {
    echo "qemu_check: binfmt for qemu-aarch64 is not available" >&2
    exit 1
}

if [[ -z ${VIRTUAL_ENV:-} ]]; then
    [[ -x .venv/bin/python ]] || scripts/setup.sh dev
    . .venv/bin/activate
fi
rc=0
python hil_tests/qemu/check.py "$@" || rc=$?
echo "qemu_check: wall time $(($(date +%s) - start)) s, exit $rc"
exit "$rc"
