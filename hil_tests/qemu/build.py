"""Build (or reuse) the arm64 Debian bookworm image for the gateway's QEMU check.

Three cached stages under ``$CITYSENSE_QEMU_CACHE`` (default /var/cache/citysense-qemu),
each in a directory named after a hash of its inputs, so a second run reuses them:

- ``base-<hash>``: an mmdebstrap arm64 minbase root filesystem, Debian's arm64 kernel and
  an arm64 static busybox (the 10-minute step; inputs: suite, package list, this stage's
  version);
- ``image-<hash>``: the base plus the gateway (a wheel built from this checkout and its
  aarch64 dependencies), the unit file, guest configuration, a host-built busybox initrd,
  as a qcow2 disk (inputs: base hash, checkout sources, guest files);
- the booted snapshot is made by ``vm.py`` inside the image directory.

Run ``python hil_tests/qemu/build.py`` to build and print the image directory.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
GUEST = HERE / "guest"
SUITE = "bookworm"
PACKAGES = (
    "systemd-sysv",
    "python3",
    "python3-venv",
    "udev",
    "iproute2",
    "dbus",
    "kmod",
    "libnss-systemd",
    "procps",
)
BASE_VERSION = "1"
IMAGE_VERSION = "1"
# initrd: what mounts /dev/vda; the NIC is loaded here too, so the root filesystem needs
# no kernel modules at all (the node link's PCI UART driver, 8250_pci, is built in).
INITRD_MODULES = (
    "virtio_pci",
    "virtio_blk",
    "crc32c_generic",  # ext4 asks the crypto API for it; not a declared dependency
    "ext4",
    "virtio_net",
)
PIP_PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_28_aarch64", "linux_aarch64")
# Units a headless test VM does not need; they cost boot time under TCG.
MASKED_UNITS = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "getty@tty1.service",
    "systemd-networkd-wait-online.service",
    "systemd-timesyncd.service",
    "systemd-tmpfiles-clean.timer",
    "man-db.timer",
)


def cache_root() -> Path:
    return Path(os.environ.get("CITYSENSE_QEMU_CACHE", "/var/cache/citysense-qemu"))


def log(msg: str) -> None:
    print(f"qemu-build: {msg}", flush=True)


def digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()[:16]


def tree_digest(paths: list[Path]) -> str:
    parts: list[str | bytes] = []
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            if "__pycache__" in f.parts or f.suffix == ".pyc":
                continue
            parts += [str(f.relative_to(REPO)), f.read_bytes()]
    return digest(*parts)


def run(argv: list[str], **kw: object) -> None:
    log("$ " + " ".join(argv))
    subprocess.run(argv, check=True, **kw)  # type: ignore[call-overload]


def heavy(argv: list[str]) -> list[str]:
    """Heavy build steps yield to the other engineers' work on the shared cores."""
    return ["nice", "-n", "10", *argv]


# ---------------------------------------------------------------- base stage


def base_key() -> str:
    return digest(BASE_VERSION, SUITE, ",".join(PACKAGES))


def build_base() -> Path:
    out = cache_root() / f"base-{base_key()}"
    if (out / "done").exists():
        log(f"base cached: {out}")
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "debs").mkdir(parents=True)
    t0 = time.monotonic()
    # Inside the foreign chroot (qemu-user), after packages are installed and before
    # apt's lists are cleaned: fetch the kernel and a static busybox as .debs, unpacked
    # on the host. Debian's initramfs-tools never runs (22 minutes under emulation).
    hook = (
        'set -e; mkdir -p "$1/tmp/dl"; '
        'k=$(chroot "$1" apt-cache depends linux-image-arm64 '
        "| sed -n 's/^ *Depends: \\(linux-image-[0-9].*-arm64\\)$/\\1/p' | head -n1); "
        'test -n "$k"; '
        'chroot "$1" sh -c "cd /tmp/dl && apt-get download -q $k busybox-static"; '
        f'mv "$1"/tmp/dl/*.deb {tmp / "debs"}/; rm -rf "$1/tmp/dl"'
    )
    run(
        heavy(
            [
                "mmdebstrap",
                "--arch=arm64",
                "--variant=minbase",
                "--include=" + ",".join(PACKAGES),
                f"--customize-hook={hook}",
                SUITE,
                str(tmp / "rootfs"),
            ]
        )
    )
    for deb in sorted((tmp / "debs").glob("*.deb")):
        target = tmp / ("kernel" if deb.name.startswith("linux-image") else "busybox")
        run(["dpkg-deb", "-x", str(deb), str(target)])
    (tmp / "done").write_text(json.dumps({"seconds": round(time.monotonic() - t0)}) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log(f"base built in {time.monotonic() - t0:.0f} s: {out}")
    return out


# ---------------------------------------------------------------- image stage

UNIT = REPO / "packaging" / "systemd" / "citysense-gateway.service"
UDEV_RULES = REPO / "packaging" / "udev" / "99-citysense-serial.rules"
GATEWAY_INPUTS = [
    REPO / "packaging",
    REPO / "gateway",
    REPO / "citysense_formats",
    REPO / "pyproject.toml",
    REPO / "requirements" / "constraints.txt",
    UNIT,
]


def gateway_available() -> bool:
    return UNIT.exists() and (REPO / "gateway" / "cli.py").exists()


def image_key(base: Path) -> str:
    inputs = [GUEST, HERE / "build.py"]
    if gateway_available():
        inputs += GATEWAY_INPUTS
    return digest(IMAGE_VERSION, base.name, tree_digest(inputs))


def kernel_version(base: Path) -> str:
    versions = sorted(p.name for p in (base / "kernel" / "lib" / "modules").iterdir())
    if len(versions) != 1:
        raise RuntimeError(f"expected one kernel in {base}/kernel, found {versions}")
    return versions[0]


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return lzma.decompress(data) if path.name.endswith(".xz") else data


def module_order(moddir: Path, wanted: tuple[str, ...]) -> list[Path]:
    """Module files in load order, dependencies first, from each module's own
    `.modinfo` `depends=` (the package ships no modules.dep: its postinst makes it)."""
    by_name = {
        p.name.split(".ko")[0].replace("-", "_"): p for p in (moddir / "kernel").rglob("*.ko*")
    }
    order: list[Path] = []

    def visit(name: str) -> None:
        path = by_name.get(name)
        if path is None:
            raise RuntimeError(f"module {name} not in {moddir} (built in?)")
        if path in order:
            return
        data = _module_bytes(path)
        at = data.find(b"\0depends=")
        deps = data[at + 9 : data.index(b"\0", at + 9)].decode() if at >= 0 else ""
        for dep in filter(None, deps.split(",")):
            visit(dep.replace("-", "_"))
        order.append(path)

    for name in wanted:
        visit(name)
    return order


def build_initrd(base: Path, out: Path) -> None:
    work = out.parent / "initrd.d"
    shutil.rmtree(work, ignore_errors=True)
    (work / "bin").mkdir(parents=True)
    (work / "modules").mkdir()
    (work / "dev").mkdir()
    shutil.copy2(base / "busybox" / "bin" / "busybox", work / "bin" / "busybox")
    shutil.copy2(GUEST / "init", work / "init")
    (work / "init").chmod(0o755)
    moddir = base / "kernel" / "lib" / "modules" / kernel_version(base)
    names = []
    for path in module_order(moddir, INITRD_MODULES):
        name = path.name.removesuffix(".xz")
        (work / "modules" / name).write_bytes(_module_bytes(path))
        names.append(name)
    (work / "modules.order").write_text("\n".join(names) + "\n")
    os.mknod(work / "dev" / "console", 0o600 | 0o020000, os.makedev(5, 1))
    files = subprocess.run(
        ["find", "."], cwd=work, check=True, capture_output=True, text=True
    ).stdout
    cpio = subprocess.run(
        ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"],
        cwd=work,
        input=files.encode(),
        check=True,
        capture_output=True,
    ).stdout
    out.write_bytes(cpio)
    shutil.rmtree(work)


def mask(root: Path, unit: str) -> None:
    link = root / "etc" / "systemd" / "system" / unit
    link.unlink(missing_ok=True)
    link.symlink_to("/dev/null")


def enable(root: Path, unit: str, target: str) -> None:
    for libdir in ("usr/lib/systemd/system", "lib/systemd/system", "etc/systemd/system"):
        if (root / libdir / unit).exists():
            break
    else:
        raise RuntimeError(f"unit {unit} not in the image")
    wants = root / "etc" / "systemd" / "system" / f"{target}.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / unit).unlink(missing_ok=True)
    (wants / unit).symlink_to(f"/{libdir}/{unit}")


def configure_guest(root: Path) -> None:
    (root / "etc" / "resolv.conf").unlink(missing_ok=True)
    shutil.copytree(GUEST / "rootfs", root, symlinks=True, dirs_exist_ok=True)
    for unit in MASKED_UNITS:
        mask(root, unit)
    enable(root, "systemd-networkd.service", "multi-user.target")
    (root / "etc" / "machine-id").write_text("")
    (root / "etc" / "citysense" / "registry").mkdir(parents=True, exist_ok=True)
    # An empty root password is never needed: the console logs in automatically.


def exec_path(unit_text: str) -> str:
    for line in unit_text.splitlines():
        if line.strip().startswith("ExecStart="):
            return line.split("=", 1)[1].strip().lstrip("-@:+!").split()[0]
    raise RuntimeError(f"no ExecStart= in {UNIT}")


LAUNCHER = """#!/usr/bin/python3
# citysense-gateway, installed from a wheel built from the checkout (pip --target).
import sys

sys.path.insert(0, "/opt/citysense/site")
from gateway.cli import main

sys.exit(main())
"""


def install_gateway(root: Path, work: Path) -> None:
    wheels = work / "wheels"
    py = sys.executable
    run([py, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)])
    (wheel,) = wheels.glob("citysense-*.whl")
    platform_args = [a for p in PIP_PLATFORMS for a in ("--platform", p)]
    run(
        [
            py, "-m", "pip", "install", "-q", "--no-compile",
            "--target", str(root / "opt" / "citysense" / "site"),
            *platform_args,
            "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
            "--only-binary=:all:",
            "-c", str(REPO / "requirements" / "constraints.txt"),
            str(wheel),
        ]
    )  # fmt: skip
    shutil.rmtree(root / "opt" / "citysense" / "site" / "bin", ignore_errors=True)
    unit_text = UNIT.read_text()
    launcher = root / exec_path(unit_text).lstrip("/")
    launcher.parent.mkdir(parents=True, exist_ok=True)
    launcher.write_text(LAUNCHER)
    launcher.chmod(0o755)
    shutil.copy2(UNIT, root / "etc" / "systemd" / "system" / UNIT.name)
    if UDEV_RULES.exists():
        shutil.copy2(UDEV_RULES, root / "etc" / "udev" / "rules.d" / UDEV_RULES.name)


def build_image() -> Path:
    base = build_base()
    out = cache_root() / f"image-{image_key(base)}"
    if (out / "done").exists():
        log(f"image cached: {out}")
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.monotonic()
    root = tmp / "root"
    run(["cp", "-a", "--reflink=auto", str(base / "rootfs"), str(root)])
    configure_guest(root)
    gateway = gateway_available()
    if gateway:
        install_gateway(root, tmp)
    else:
        log("gateway not in the checkout yet (gateway/cli.py, unit file): stand-in only")
    version = kernel_version(base)
    shutil.copy2(base / "kernel" / "boot" / f"vmlinuz-{version}", tmp / "vmlinuz")
    build_initrd(base, tmp / "initrd")
    raw = tmp / "disk.raw"
    run(heavy(["mke2fs", "-q", "-t", "ext4", "-L", "root", "-d", str(root), str(raw), "2G"]))
    run(heavy(["qemu-img", "convert", "-O", "qcow2", str(raw), str(tmp / "disk.qcow2")]))
    raw.unlink()
    shutil.rmtree(root)
    info = {"seconds": round(time.monotonic() - t0), "kernel": version, "gateway": gateway}
    (tmp / "done").write_text(json.dumps(info) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log(f"image built in {time.monotonic() - t0:.0f} s: {out}")
    prune_images(keep=3)
    return out


def prune_images(keep: int) -> None:
    """Each image is ~1 GB with its snapshot: keep the newest few."""
    images = sorted(
        (p for p in cache_root().glob("image-*") if (p / "done").exists()),
        key=lambda p: (p / "done").stat().st_mtime,
        reverse=True,
    )
    for old in images[keep:]:
        log(f"pruning {old}")
        shutil.rmtree(old, ignore_errors=True)


if __name__ == "__main__":
    stage = sys.argv[1] if len(sys.argv) > 1 else "image"
    print(build_base() if stage == "base" else build_image())
