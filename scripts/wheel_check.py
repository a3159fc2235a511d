"""The installed package, driven as a technician drives it: run by scripts/wheel_check.sh
with the interpreter of a clean venv that has only the built wheel (`citysense[provision]`)
in it, from a directory outside the checkout. Usage: python wheel_check.py CHECKOUT WORKDIR

1. the modules and console scripts are the venv's (nothing imported from the checkout);
2. `citysense-emulator repl` starts on an empty flash folder (it needs the bundled HAL);
3. `citysense-provision deploy` copies the bundled firmware: exactly the checkout's
   firmware files, and `firmware_sha256` of what the device holds;
4. `citysense-provision enroll --json` makes the key on the node: a new key, registry entry
   with that public key;
5. `citysense-emulator run` boots the deployed firmware: its HELLO names the device, its
   first RECORD verifies with the registry's key and carries seq = the enrollment's seq
   floor, and an ACK of it makes the node delete it (an `ack` event for that seq).
Every step has a time bound; every process started is killed at the end. Exit 0 only if
all of it held; else one line `wheel_check: what failed` and exit 1.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import tty
from pathlib import Path
from typing import Any

DEVICE_ID = "wheel-node"
UID = "02c17e0a0b0c"


class CheckFailed(Exception):
    pass


def check(cond: bool, what: str) -> None:
    if not cond:
        raise CheckFailed(what)


BIN = Path(sys.executable).parent
ENV = {k: v for k, v in os.environ.items() if k not in ("CITYSENSE_FIRMWARE", "PYTHONPATH")}


def tool(name: str) -> str:
    path = BIN / name
    check(path.exists(), f"{name} is not installed in {BIN}")
    return str(path)


def run(*argv: str, timeout: float = 120) -> str:
    res = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=ENV, check=False
    )
    if res.returncode != 0:
        raise CheckFailed(f"{Path(argv[0]).name} {argv[1]} exit {res.returncode}: {res.stderr}")
    return res.stdout


class Procs:
    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], log: Path, **kw: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stderr=log.open("ab"),
            stdout=kw.pop("stdout", subprocess.DEVNULL),
            env=ENV,
            start_new_session=True,
        )
        self.started.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def close(self) -> None:
        for proc in self.started:
            self.stop(proc)


def wait_path(path: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise CheckFailed(f"{path.name} never appeared: {log.read_text()[-500:]}")
        time.sleep(0.05)


def check_installed() -> None:
    import emulator
    import gateway
    import provisioning

    for mod in (emulator, gateway, provisioning):
        where = Path(mod.__file__ or "").resolve()
        check(Path(sys.prefix).resolve() in where.parents, f"{mod.__name__} from {where}")


def expected_files(checkout: Path) -> set[str]:
    """Device paths of the checkout's firmware as deploy copies it to the emulator."""
    fw = checkout / "firmware"
    files = {"/main.py", "/boot.py"}
    files |= {"/" + p.relative_to(fw).as_posix() for p in (fw / "lib").rglob("*.py")}
    return files


def deploy_and_enroll(checkout: Path, work: Path, procs: Procs) -> tuple[Path, dict[str, Any]]:
    flash, port, log = work / "flash", work / "node.repl", work / "repl.log"
    flash.mkdir()
    repl = procs.start(
        [tool("citysense-emulator"), "repl", "--flash", str(flash), "--port", str(port),
         "--unique-id", UID],
        log,
    )  # fmt: skip
    wait_path(port, repl, log)
    report = json.loads(run(tool("citysense-provision"), "deploy", "--port", str(port), "--json"))
    want = expected_files(checkout)
    check(set(report["copied"]) == want, f"deploy copied {sorted(report['copied'])}")
    check(report["removed"] == [] and report["unchanged"] == [], f"deploy report {report}")
    on_flash = {"/" + p.relative_to(flash).as_posix() for p in flash.rglob("*.py")}
    check(on_flash == want, f"the flash holds {sorted(on_flash)}")
    for rel in want:  # byte for byte the checkout's firmware
        same = (flash / rel[1:]).read_bytes() == (checkout / "firmware" / rel[1:]).read_bytes()
        check(same, f"{rel} on the node differs from the checkout's")
    op_key = work / "operator.key"
    run(tool("citysense-provision"), "operator-key", "init", "--out", str(op_key))
    argv = [
        tool("citysense-provision"), "enroll", "--port", str(port),
        "--registry", str(work / "registry"), "--device-id", DEVICE_ID,
        "--operator-pub", f"{op_key}.pub", "--interval", "1", "--batch", "1", "--json",
    ]  # fmt: skip
    summary: dict[str, Any] = json.loads(run(*argv))
    procs.stop(repl)
    check(summary["key"] == "new" and summary["target"] == "emulator", f"enroll {summary}")
    check(summary["firmware_sha256"] == report["firmware_sha256"], "firmware hash differs")
    entry = json.loads((work / "registry" / f"{DEVICE_ID}.json").read_text())
    check(entry["public_key"] == summary["public_key"], "registry key differs from enroll's")
    check(entry["status"] == "active", f"registry status {entry['status']}")
    return flash, summary


class Line:
    """The gateway's end of the node's data pty."""

    def __init__(self, path: Path) -> None:
        from gateway.protocol import FrameDecoder

        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self.fd)
        self.dec = FrameDecoder()

    def expect(self, ftype: int, timeout: float = 30) -> bytes:
        from gateway.protocol import ProtocolError

        deadline = time.monotonic() + timeout
        while True:
            try:
                frame = self.dec.next_frame()
            except ProtocolError:
                continue
            if frame is not None and frame.type == ftype:
                return frame.body
            left = deadline - time.monotonic()
            check(left > 0, f"no frame of type {ftype:#04x} from the node in {timeout} s")
            if frame is None and select.select([self.fd], [], [], min(left, 0.5))[0]:
                self.dec.feed(os.read(self.fd, 4096))


def wait_event(out: Any, want: dict[str, Any], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    seen = b""
    while True:
        left = deadline - time.monotonic()
        check(left > 0, f"no event {want} from the node: {seen.decode(errors='replace')}")
        if select.select([out], [], [], min(left, 0.5))[0]:
            chunk = os.read(out.fileno(), 65536)
            check(bool(chunk), f"the emulator exited before {want}")
            seen += chunk
            lines = seen.split(b"\n")[:-1]
            if any(json.loads(x) == want for x in lines if x.startswith(b"{")):
                return


def run_node(flash: Path, summary: dict[str, Any], work: Path, procs: Procs) -> None:
    from gateway.protocol import (
        FrameType,
        decode_hello,
        decode_record_payload,
        encode_ack,
        encode_frame,
        verify1,
    )

    link, log = work / "node.tty", work / "node.log"
    node = procs.start(
        [tool("citysense-emulator"), "run", "--flash", str(flash), "--link", str(link)],
        log,
        stdout=subprocess.PIPE,
    )
    wait_path(link, node, log)
    line = Line(link)
    hello = decode_hello(line.expect(FrameType.HELLO))
    check(hello.device_id == DEVICE_ID, f"HELLO from {hello.device_id!r}")
    body = line.expect(FrameType.RECORD)
    kid, payload = verify1(bytes.fromhex(summary["public_key"]), body)
    check(kid == DEVICE_ID.encode(), f"record kid {kid!r}")
    rec = decode_record_payload(payload)
    check(rec.seq == summary["seq_floor"], f"first seq {rec.seq}, floor {summary['seq_floor']}")
    os.write(line.fd, encode_frame(FrameType.ACK, encode_ack(rec.seq)))
    wait_event(node.stdout, {"ev": "ack", "seq": rec.seq})
    os.close(line.fd)


def release_build(checkout: Path, work: Path) -> int:
    """An operator's release from the installed package: a release key, then a bundle of
    the bundled firmware (not the checkout's), which must verify and name every module."""
    key = work / "release.key"
    run(tool("citysense-provision"), "release-key", "--out", str(key))
    check(key.stat().st_mode & 0o777 == 0o600, "release key is not 0600")
    (work / "cloud.toml").write_text('[state]\ndir = "cloud-state"\n')
    out = work / "r.csb"
    version = re.search(
        r'^VERSION = "([^"]+)"', (checkout / "firmware/lib/citysense/app.py").read_text(), re.M
    )
    check(version is not None, "no VERSION in the checkout's app.py")
    assert version is not None
    run(
        tool("citysense-cloud"), "--config", str(work / "cloud.toml"), "release", "build",
        "--version", version.group(1), "--seq", "1", "--key", str(key), "--out", str(out),
    )  # fmt: skip
    from citysense_formats import bundle
    from cloud.release_build import load_release_key

    pub = load_release_key(key, None).public_key()
    b = bundle.verify(out.read_bytes(), pub)
    modules = {p.relative_to(checkout / "firmware/lib").with_suffix(".mpy").as_posix()
               for p in (checkout / "firmware/lib").rglob("*.py")}  # fmt: skip
    names = {f.path for f in b.files}
    check(names <= modules and "citysense/app.mpy" in names, f"bundle files {sorted(names)}")
    return len(names)


def main() -> int:
    checkout, work = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    procs = Procs()
    started = time.monotonic()
    try:
        check_installed()
        flash, summary = deploy_and_enroll(checkout, work, procs)
        run_node(flash, summary, work, procs)
        n_files = release_build(checkout, work)
    except (CheckFailed, subprocess.TimeoutExpired, OSError, ValueError) as exc:
        print(f"wheel_check: {exc}", file=sys.stderr)
        return 1
    finally:
        procs.close()
    print(
        f"wheel_check: ok in {time.monotonic() - started:.1f} s: deploy, enroll and a verified,"
        f" ACKed record (seq {summary['seq_floor']}) from the installed package; a release"
        f" of the bundled firmware ({n_files} modules) built and verified"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
