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

    def __init__(
        self,
        workdir: Path,
        port: int,
        tls: BrokerTLS | None,
        acl: str | None = None,
        *,
        persistence: bool = True,
        limits: tuple[int, int] = (100, 100_000),
    ):
        """`limits`: (max_inflight_messages, max_queued_messages), 0 = unlimited."""
        self.workdir = workdir
        self.port = port
        self.tls = tls
        self.conf = workdir / "mosquitto.conf"
        lines = [
            "per_listener_settings false",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {workdir}/",
            "autosave_interval 1",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type subscribe",
            f"max_inflight_messages {limits[0]}",
            f"max_queued_messages {limits[1]}",
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
        wait_until(self._up, timeout, f"mosquitto on port {self.port}")

    def _up(self) -> bool:
        if self.proc is not None and not self.proc.alive():
            raise RuntimeError(f"mosquitto exited at start: {self.log()[-2000:]}")
        return _port_open(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=5)
            self.proc = None
        deadline = time.monotonic() + 5
        while _port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def log(self) -> str:
        return (self.workdir / "mosquitto.log").read_text(errors="replace")


def acl_for(
    gateway_ids: list[str],
    consumer: str = "consumer",
    operator: str = "operator",
    ingest: str = "ingest",
) -> str:
    """Mosquitto acl_file text (user = the client certificate's CN). A gateway writes only
    its own records, command-results, status and OTA reports and reads only its own
    commands, the registry updates and the firmware bundles (for all, and its own); the
    consumer reads everything and writes nothing; the cloud ingest reads the records and
    nothing else (its `$share/<group>/...` subscription is checked against the filter
    after the group); only the operator publishes commands, registry updates and bundles
    (and reads the command results, the gateways' status and OTA reports). Anything not
    granted is denied: a v5 publish outside these gets PUBACK 0x87. docs/operations.md
    shows the same."""
    out: list[str] = []
    for gw in gateway_ids:
        out += [
            f"user {gw}",
            f"topic write citysense/v1/{gw}/+/records",
            f"topic write citysense/v1/{gw}/+/command-results",
            f"topic write citysense/v1/{gw}/status",
            f"topic read citysense/v1/{gw}/+/commands",
            "topic read citysense/v1/registry",
            f"topic read citysense/v1/{gw}/registry",
            "topic read citysense/v1/ota",
            f"topic read citysense/v1/{gw}/ota",
            f"topic write citysense/v1/{gw}/ota-report",
            "",
        ]
    out += [f"user {consumer}", "topic read citysense/v1/#", ""]
    out += [f"user {ingest}", "topic read citysense/v1/+/+/records", ""]
    out += [
        f"user {operator}",
        "topic write citysense/v1/+/+/commands",
        "topic write citysense/v1/registry",
        "topic write citysense/v1/+/registry",
        "topic write citysense/v1/ota",
        "topic write citysense/v1/+/ota",
        "topic read citysense/v1/+/+/command-results",
        "topic read citysense/v1/+/status",
        "topic read citysense/v1/+/ota-report",
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
