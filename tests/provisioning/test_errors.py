"""Every error path: one line on stderr, `citysense-provision: what, what to do`, exit != 0."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serial
from prov_support import (
    NodeRepl,
    Result,
    assert_one_line_error,
    run_cli,
    standin_cmd,
    start_node,
)
from support import REPO

from provisioning.transport import device_error, open_error


def test_missing_port(tmp_path: Path) -> None:
    res = run_cli("deploy", "--port", str(tmp_path / "ttyUSB9"))
    assert_one_line_error(res, "does not exist", "check the USB cable")


def test_busy_port(node: NodeRepl) -> None:
    holder = serial.Serial(str(node.port), exclusive=True)
    try:
        res = run_cli("enroll", "--port", str(node.port), "--registry", "/tmp/unused-reg")
        assert_one_line_error(res, f"serial port {node.port} is busy", "close the other program")
    finally:
        holder.close()


def test_permission_denied_as_unprivileged_user() -> None:
    """Real EACCES: the CLI runs as `nobody` (setpriv) against a root-owned pty (0620).
    (We are root, for whom chmod 000 would not deny anything.)"""
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.getuid() != 0:
        pytest.skip("needs root and setpriv to run the CLI as another user")
    master, slave = os.openpty()
    try:
        tty = os.ttyname(slave)
        os.chmod(tty, 0o620)
        proc = subprocess.run(
            [
                setpriv,
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--",
                sys.executable,
                "-m",
                "provisioning.cli",
                "deploy",
                "--port",
                tty,
                "--audit",
                "/dev/null",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            check=False,
        )
    finally:
        os.close(master)
        os.close(slave)
    if "ModuleNotFoundError" in proc.stderr or "Permission denied: '" in proc.stderr:
        pytest.skip(f"the venv is not readable by nobody: {proc.stderr.strip()[-200:]}")
    res = Result(proc.returncode, proc.stdout, proc.stderr)
    assert_one_line_error(res, f"permission denied opening {tty}", "dialout group")


def test_open_error_mapping() -> None:
    """The mapping itself, for the errno values a real port gives (EBUSY from USB drivers)."""
    cases = {
        errno.EACCES: "permission denied opening /dev/ttyUSB0, add yourself to the dialout",
        errno.EBUSY: "serial port /dev/ttyUSB0 is busy",
        errno.EAGAIN: "serial port /dev/ttyUSB0 is busy",
        errno.ENOENT: "serial port /dev/ttyUSB0 does not exist",
        errno.ENOTTY: "/dev/ttyUSB0 is not a serial port",
    }
    for code, text in cases.items():
        exc = serial.SerialException(code, "could not open port")
        assert str(open_error("/dev/ttyUSB0", exc)).startswith(text)


def test_device_error_mapping() -> None:
    tb = 'Traceback (most recent call last):\n  File "<stdin>", line 1\nOSError: 28\n'
    assert str(device_error(tb, "writing /x")).startswith(
        "device out of flash (ENOSPC) while writing /x"
    )
    tb = "Traceback:\nImportError: no module named 'citysense'\n"
    assert "run citysense-provision deploy first" in str(device_error(tb, "enrolling"))


def test_nothing_answering_on_pty() -> None:
    """A pty with no MicroPython behind it (we hold the other end and stay silent)."""
    master, slave = os.openpty()
    try:
        started = time.monotonic()
        res = run_cli("deploy", "--port", os.ttyname(slave), "--timeout", "2")
        elapsed = time.monotonic() - started
    finally:
        os.close(master)
        os.close(slave)
    assert_one_line_error(res, "no MicroPython REPL answered on", "within 2 s")
    assert elapsed < 30  # a bound on the wait, not a performance figure


def test_not_a_serial_port(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    assert_one_line_error(run_cli("deploy", "--port", str(f)), "is not a serial port")


def test_flash_against_emulator_fails_cleanly(node: NodeRepl, tmp_path: Path) -> None:
    image = tmp_path / "micropython.bin"
    image.write_bytes(b"\xe9" + bytes(4095))
    started = time.monotonic()
    res = run_cli("flash", "--port", str(node.port), "--firmware", str(image), timeout=30)
    elapsed = time.monotonic() - started
    assert_one_line_error(res, f"no ESP32 bootloader answered on {node.port}", "hold BOOT")
    assert elapsed < 10, elapsed  # the bound: fails within 10 s


def test_flash_refuses_non_image(tmp_path: Path) -> None:
    image = tmp_path / "notes.txt"
    image.write_text("hello" * 400)
    res = run_cli("flash", "--port", "/dev/null", "--firmware", str(image))
    assert_one_line_error(res, "is not an ESP32 firmware image")


def test_enroll_errors(node: NodeRepl, tmp_path: Path) -> None:
    reg = tmp_path / "reg"
    # firmware not deployed yet
    res = run_cli("enroll", "--port", str(node.port), "--registry", str(reg), "--device-id", "n1")
    assert_one_line_error(res, "the citysense firmware is not on the device", "deploy first")
    assert run_cli("deploy", "--port", str(node.port)).code == 0
    res = run_cli("enroll", "--port", str(node.port), "--registry", str(reg), "--device-id", "n1")
    assert_one_line_error(res, "n1 has no operator key, pass --operator-pub")
    assert not (node.flash / "config" / "device.key").exists()
    res = run_cli(
        "enroll", "--port", str(node.port), "--registry", str(reg), "--device-id", "../evil"
    )
    assert_one_line_error(res, "invalid device id '../evil'")
    pub = tmp_path / "op.pub"
    pub.write_text("zz\n")
    res = run_cli(
        "enroll", "--port", str(node.port), "--registry", str(reg), "--operator-pub", str(pub)
    )
    assert_one_line_error(
        res, "is not 64 hex chars (the .pub file) or an Ed25519 PEM public key", "--operator-pub"
    )
    pub.write_text("ab" * 32)
    res = run_cli(
        "enroll",
        "--port",
        str(node.port),
        "--registry",
        str(reg),
        "--operator-pub",
        str(pub),
        "--batch",
        "0",
    )
    assert_one_line_error(res, "--batch 0 is out of range, use 1..64")
    # a device.json bigger than the node reads (it would boot with config-corrupt)
    sensors = ",".join(f"s{i:07d}" for i in range(200))
    res = run_cli(
        "enroll", "--port", str(node.port), "--registry", str(reg), "--operator-pub", str(pub),
        "--sensors", sensors,
    )  # fmt: skip
    assert_one_line_error(
        res,
        "the node would refuse this configuration (config: ",
        "bytes, the node reads at most 2048), fix the options",
    )
    assert not (node.flash / "config" / "device.json").exists()
    assert list(reg.glob("*.json")) == []


def test_usage_and_registry_errors(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("enroll"), "the following arguments are required", "--help")
    assert_one_line_error(run_cli("frobnicate"), "invalid choice", "--help")
    res = run_cli("registry", "show", "nope", "--registry", str(tmp_path))
    assert_one_line_error(res, "device nope is not in the registry")
    res = run_cli("registry", "list", "--registry", str(tmp_path / "missing"))
    assert_one_line_error(res, "registry directory", "does not exist")
    (tmp_path / "bad.json").write_text("{not json")
    res = run_cli("registry", "list", "--registry", str(tmp_path))
    assert_one_line_error(res, "bad.json: not valid JSON", "restore it")
    key = tmp_path / "op.key"
    assert run_cli("operator-key", "init", "--out", str(key)).code == 0
    res = run_cli("operator-key", "init", "--out", str(key))
    assert_one_line_error(res, "already exists, refusing to overwrite")
    res = run_cli("ca", "init")
    assert_one_line_error(res, "ca init needs --dir")


def test_refuses_an_unmounted_emulator(tmp_path: Path) -> None:
    """A unix-port REPL whose / is the host's root (no flash folder mounted): deploy must
    refuse before writing anything (it would otherwise write into the host's /lib)."""
    flash, port = tmp_path / "raw-flash", tmp_path / "raw.tty"
    node = start_node(tmp_path, "raw", "00", standin_cmd(flash, port, "00", tmp_path, False))
    try:
        res = run_cli("deploy", "--port", str(node.port))
        assert_one_line_error(res, "the emulator's / is the host's root", "refusing to write")
    finally:
        node.stop()
