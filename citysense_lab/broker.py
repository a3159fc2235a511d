"""A real Mosquitto for the tests: own config, free port on 127.0.0.1, mTLS and an ACL."""

from __future__ import annotations

import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from .procs import Proc, wait_until


@dataclass(frozen=True)
class BrokerTLS:
    ca_file: Path
    cert_file: Path
    key_file: Path


def mosquitto_path() -> str:
    for candidate in ("/usr/sbin/mosquitto", shutil.which("mosquitto")):
        if candidate and Path(candidate).exists():
            return candidate
    raise RuntimeError("mosquitto not installed: run scripts/setup.sh (apt-get install mosquitto)")


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Mosquitto:
    """Mosquitto on a fixed port that survives stop()/start() (for outage scenarios).

    With `tls`, clients must present a certificate from the CA; the certificate's CN is
    the MQTT user name the ACL checks (`use_identity_as_username`).
    """

    kind = "mosquitto"

    def __init__(self, workdir: Path, port: int, tls: BrokerTLS | None, acl: str | None = None):
        self.workdir = workdir
        self.port = port
        self.tls = tls
        self.conf = workdir / "mosquitto.conf"
        lines = [
            "per_listener_settings false",
            "persistence true",
            f"persistence_location {workdir}/",
            "autosave_interval 1",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type subscribe",
            "max_inflight_messages 100",
            "max_queued_messages 100000",
            f"listener {port} 127.0.0.1",
        ]
        if os.geteuid() == 0:
            # as root Mosquitto drops to user "mosquitto", which cannot read 0600 keys
            lines.insert(0, "user root")
        if tls is not None:
            lines += [
                f"cafile {tls.ca_file}",
                f"certfile {tls.cert_file}",
                f"keyfile {tls.key_file}",
                "require_certificate true",
                "use_identity_as_username true",
                "allow_anonymous false",
            ]
        else:
            lines.append("allow_anonymous true")
        if acl is not None:
            acl_path = workdir / "acl"
            acl_path.write_text(acl)
            lines.append(f"acl_file {acl_path}")
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: Proc | None = None
        self.starts = 0

    def start(self, timeout: float = 15.0) -> None:
        self.starts += 1
        self.proc = Proc(
            f"mosquitto-{self.starts}",
            [mosquitto_path(), "-c", str(self.conf)],
            self.workdir / "mosquitto.log",
        ).start()
        wait_until(lambda: _port_open(self.port), timeout, f"mosquitto on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=5)
            self.proc = None
        deadline = time.monotonic() + 5
        while _port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def log(self) -> str:
        return (self.workdir / "mosquitto.log").read_text(errors="replace")


def acl_for(gateway_ids: list[str], consumer: str = "consumer") -> str:
    """Each gateway may write only under its own prefix; the consumer reads everything
    and may send commands."""
    out: list[str] = []
    for gw in gateway_ids:
        out += [f"user {gw}", f"topic readwrite citysense/v1/{gw}/#", ""]
    out += [
        f"user {consumer}",
        "topic read citysense/v1/#",
        "topic write citysense/v1/+/+/commands",
        "",
    ]
    return "\n".join(out)


class AmqttBroker:
    """The PyPI broker (amqtt) in its own process, same start/stop interface as Mosquitto."""

    kind = "amqtt"

    def __init__(self, workdir: Path, port: int, tls: BrokerTLS | None) -> None:
        self.workdir = workdir
        self.port = port
        self.tls = tls
        self.proc: Proc | None = None
        self.starts = 0

    def start(self, timeout: float = 30.0) -> None:
        import sys

        self.starts += 1
        argv = [sys.executable, "-m", "citysense_lab.amqtt_broker", "--port", str(self.port)]
        if self.tls is not None:
            argv += ["--ca", str(self.tls.ca_file), "--cert", str(self.tls.cert_file)]
            argv += ["--key", str(self.tls.key_file)]
        self.proc = Proc(f"amqtt-{self.starts}", argv, self.workdir / "amqtt.log").start()
        wait_until(lambda: _port_open(self.port), timeout, f"amqtt on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=5)
            self.proc = None


def have_mosquitto() -> bool:
    try:
        mosquitto_path()
    except RuntimeError:
        return False
    return True
