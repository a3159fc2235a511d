"""Firmware-update test helpers: bundles of the real firmware, and a stack of real parts
(Mosquitto, the gateway agent with [ota], emulated nodes running the firmware) to update.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nodeproc import compiled_lib
from peer import OPERATOR_SEED, provision, public_key
from rfc8428 import resolve
from support import FIRMWARE_LIB, REPO, free_port

sys.path.insert(0, str(REPO / "tests" / "gateway"))

from gwsupport import Node, Subscriber, start_gateway, stop, wait_log, write_config, write_entry

from citysense_formats import bundle
from citysense_lab.broker import Mosquitto
from citysense_lab.procs import Proc, wait_until
from emulator.mpy import compile_lib
from gateway.protocol import (
    TIME_BASE_UNIX,
    Command,
    decode_record_payload,
    parse_sign1,
    sign_command,
)

BIN = Path(sys.executable).parent
GW = "gw-ota"
RELEASE_SEED = bytes(range(200, 232))
RELEASE_KEY = Ed25519PrivateKey.from_private_bytes(RELEASE_SEED)
ARCH = "x64"  # what the unix port here reports (sys.implementation._mpy); mpy-cross -march=host


def lib_files(lib: Path) -> list[tuple[str, bytes]]:
    return [(str(p.relative_to(lib)), p.read_bytes()) for p in sorted(lib.rglob("*.mpy"))]


def patched_lib(work: Path, name: str, edit: Callable[[str], str]) -> Path:
    """The firmware library with citysense/app.py edited, compiled to .mpy."""
    src = work / f"src-{name}"
    subprocess.run(["cp", "-r", str(FIRMWARE_LIB), str(src)], check=True)
    app = src / "citysense" / "app.py"
    app.write_text(edit(app.read_text()))
    return compile_lib(src, work / f"lib-{name}")


def make_bundle(
    version: str,
    seq: int,
    *,
    lib: Path | None = None,
    hardware: str = "esp32",
    key: Ed25519PrivateKey = RELEASE_KEY,
) -> bytes:
    return bundle.build(
        lib_files(lib or compiled_lib()), version=version, seq=seq, hardware=hardware,
        protocol=2, arch=ARCH, signing_key=key, created_ms=1_764_047_000_000,
    )  # fmt: skip


def readings(payload: bytes) -> dict[str, list[Any]]:
    """name -> values of one record's pack (names as RFC 8428 resolves them)."""
    out: dict[str, list[Any]] = {}
    for r in resolve(decode_record_payload(parse_sign1(payload).payload).pack):
        out.setdefault(r[0].split("/", 1)[1], []).append(r[2] if len(r) > 2 else None)
    return out


class Stack:
    """Mosquitto, a gateway with [ota] on `<d>/links/*.tty`, and emulated nodes."""

    def __init__(self, d: Path) -> None:
        self.d = d
        for sub in ("broker", "links", "registry", "flash"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "release.pub").write_text(public_key(RELEASE_SEED).hex() + "\n")
        (d / "operator.pub").write_text(public_key(OPERATOR_SEED).hex() + "\n")
        self.broker = Mosquitto(d / "broker", free_port(), None, None, limits=(0, 0))
        self.broker.start()
        self.nodes: dict[str, Proc] = {}
        self.cfg = write_config(
            d / "gw.toml",
            id=f'"{GW}"',
            port=f'"{d / "links"}/*.tty"',
            url=f'"mqtt://127.0.0.1:{self.broker.port}"',
            extra_gateway=f'operator_key = "{d / "operator.pub"}"',
        )
        with self.cfg.open("a") as f:
            f.write(f'\n[ota]\nrelease_key = "{d / "release.pub"}"\n')
        self.gw_log = d / "gw.log"
        self.gw: subprocess.Popen[bytes] | None = None
        self.sub = Subscriber(self.broker.port, "citysense/v1/#")
        self._command_ids = itertools.count(1)  # next() is atomic: lanes send from threads

    def start_gateway(self) -> None:
        self.gw = start_gateway(self.cfg, self.gw_log)
        wait_log(self.gw_log, "event=uplink-connected", timeout=60)

    def stop_gateway(self) -> None:
        if self.gw is not None:
            stop(self.gw)
            self.gw = None

    def flash(self, device: str) -> Path:
        return self.d / "flash" / device

    def add_node(
        self,
        device: str,
        uid: str,
        *,
        interval: int = 1,
        release_pub: bool = True,
        start: bool = True,
    ) -> None:
        seed = os.urandom(32)
        write_entry(self.d / "registry", Node(device, seed))
        flash = self.flash(device)
        flash.mkdir(parents=True, exist_ok=True)
        provision(flash, device_id=device, interval=interval)
        (flash / "config" / "device.key").write_bytes(seed)
        if release_pub:
            (flash / "config" / "release.pub").write_bytes(public_key(RELEASE_SEED))
        if start:
            self.start_node(device, uid)

    def start_node(self, device: str, uid: str = "") -> None:
        uid = uid or self.nodes[device].argv[-1]
        link = self.d / "links" / f"{device}.tty"
        argv = [str(BIN / "citysense-emulator"), "run", "--flash", str(self.flash(device)),
                "--link", str(link), "--unique-id", uid]  # fmt: skip
        self.nodes[device] = Proc(device, argv, self.d / f"{device}.log").start()
        wait_until(link.exists, 30, f"the link pty of {device}")

    def cut_power(self, device: str) -> None:
        self.nodes[device].kill9()

    def retire(self, device: str) -> None:
        """Power off for good and take the link away (a pty number freed by a dead
        emulator is soon reused: a stale link would lead the gateway to another node)."""
        self.nodes[device].kill9()
        (self.d / "links" / f"{device}.tty").unlink(missing_ok=True)

    def _delivered(self, device: str) -> Iterator[tuple[Any, bytes]]:
        """(decoded record payload, raw COSE_Sign1) of every record of `device` the
        broker delivered, in order."""
        for topic, payload, _ in self.sub.snapshot():
            if topic == f"citysense/v1/{GW}/{device}/records":
                yield decode_record_payload(parse_sign1(payload).payload), payload

    def records(self, device: str) -> list[tuple[int, dict[str, list[Any]]]]:
        """(seq, readings) of every record of `device` the broker delivered, in order."""
        return [(rec.seq, readings(raw)) for rec, raw in self._delivered(device)]

    def boots(self, device: str) -> list[tuple[int, dict[str, list[Any]]]]:
        """(boot count, readings) of every record of `device` the broker delivered."""
        return [(rec.boot, readings(raw)) for rec, raw in self._delivered(device)]

    def ota_notes(self, device: str) -> list[str]:
        return [n for _, r in self.records(device) for n in r.get("sys/ota", [])]

    def wait_note(self, device: str, prefix: str, timeout: float = 90) -> str:
        try:
            wait_until(
                lambda: any(n.startswith(prefix) for n in self.ota_notes(device)),
                timeout,
                f"sys/ota {prefix!r} from {device}",
                interval=0.3,
            )
        except AssertionError as exc:  # the notes as they are now, not as they were at the start
            raise AssertionError(f"{exc}: got {self.ota_notes(device)}") from None
        return next(n for n in self.ota_notes(device) if n.startswith(prefix))

    def fw(self, device: str) -> list[str]:
        return [v for _, r in self.records(device) for v in r.get("sys/fw", [])]

    def wait_clock(self, device: str, timeout: float = 60) -> None:
        """Until the newest record of `device` the broker delivered was sealed with Unix
        time: the node has had its TIME frame since it booted. Before that it refuses
        every bound command ("rejected: no clock", as it must), and a first record can
        come before the TIME (docs/protocol.md, TIME)."""

        def newest_has_clock() -> bool:
            bases = [rec.time_base for rec, _ in self._delivered(device)]
            return bool(bases) and bases[-1] == TIME_BASE_UNIX

        wait_until(newest_has_clock, timeout, f"a record of {device} sealed with its clock")

    def send_update(self, device: str, bundle_id: str, expires_in_ms: int = 120_000) -> int:
        """A signed `update` command for `device`; call `wait_clock` first (the node
        refuses a bound command until it has a clock)."""
        command_id = next(self._command_ids)
        cmd = Command(command_id, "update", {"bundle": bundle_id}, device, GW,
                      int(time.time() * 1000) + expires_in_ms)  # fmt: skip
        self.sub.client.publish(
            f"citysense/v1/{GW}/{device}/commands", sign_command(OPERATOR_SEED, cmd), qos=1
        )
        return command_id

    def results(self, device: str) -> list[dict[int, Any]]:
        import cbor2

        out = []
        for topic, payload, _ in self.sub.snapshot():
            if topic == f"citysense/v1/{GW}/{device}/command-results" and payload[:1] != b"{":
                out.append(cbor2.loads(parse_sign1(payload).payload))
        return out

    def refusals(self, device: str) -> list[dict[str, Any]]:
        """The gateway's own refusals of commands for `device` (unsigned JSON)."""
        return [
            json.loads(payload)
            for topic, payload, _ in self.sub.snapshot()
            if topic == f"citysense/v1/{GW}/{device}/command-results" and payload[:1] == b"{"
        ]

    def push(self, path: Path, device: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway.cli", "ota", "push", str(path), "--device", device,
             "--config", str(self.cfg)],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    def close(self) -> None:
        self.stop_gateway()
        for p in self.nodes.values():
            p.kill9()
        self.sub.close()
        self.broker.stop()
