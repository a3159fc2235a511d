"""Helpers for the cloud tests: a real PostgreSQL, ingest processes, a record publisher.

PostgreSQL (Debian `postgresql`, binaries in /usr/lib/postgresql/<v>/bin) runs as a
non-root user (the Debian `postgres` user, or `citysense-pg` made with useradd when
missing) in a fresh directory on a free port; `stop()` kills it. Mosquitto, keys and
records come from tests/gateway/gwsupport.py (on sys.path through conftest.py).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
from support import REPO, free_port

PG_USER_CANDIDATES = ("postgres", "citysense-pg")


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _pg_user() -> pwd.struct_passwd:
    for name in PG_USER_CANDIDATES:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "citysense-pg"],
        check=True,
        timeout=30,
    )
    return pwd.getpwnam("citysense-pg")


class Postgres:
    """A throwaway PostgreSQL server: `url`, `start()`, `stop(mode)`, `kill()`."""

    def __init__(self) -> None:
        binaries = pg_bin()
        if binaries is None:
            raise RuntimeError("PostgreSQL not installed: run scripts/setup.sh dev")
        self.bin = binaries
        self.user = _pg_user() if os.geteuid() == 0 else pwd.getpwuid(os.getuid())
        self.dir = Path(tempfile.mkdtemp(prefix="citysense-pg-"))
        os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.port = free_port()
        self.url = f"postgresql://citysense@127.0.0.1:{self.port}/postgres"
        self._run("initdb", "-D", str(self.data), "-U", "citysense", "--auth=trust", "-E", "UTF8")

    def _run(self, tool: str, *args: str, timeout: float = 120) -> None:
        subprocess.run(
            [str(self.bin / tool), *args],
            user=self.user.pw_uid if os.geteuid() == 0 else None,
            group=self.user.pw_gid if os.geteuid() == 0 else None,
            extra_groups=[] if os.geteuid() == 0 else None,
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
            cwd=self.dir,
            check=True,
            capture_output=True,
            timeout=timeout,
        )

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=50"
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.log), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """`fast` (clean) or `immediate` (a crash: no checkpoint, recovery on start)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def pid(self) -> int | None:
        pidfile = self.data / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError):
            return int(pidfile.read_text().split()[0])
        return None

    def kill(self) -> None:
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def postgres() -> Iterator[Postgres]:
    pg = Postgres()
    try:
        pg.start()
        yield pg
    finally:
        pg.cleanup()


def cloud_config(path: Path, broker_port: int, registry: Path, database: str) -> Path:
    path.write_text(
        f"""[broker]
url = "mqtt://127.0.0.1:{broker_port}"
[registry]
path = "{registry}"
[database]
url = "{database}"
[ingest]
batch = 200
"""
    )
    return path


def start_ingest_args(config: Path, instance: str) -> list[str]:
    cli = [sys.executable, "-m", "cloud.cli", "--config", str(config)]
    return [*cli, "ingest", "--instance", instance]


def start_ingest(config: Path, instance: str, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        start_ingest_args(config, instance),
        cwd=REPO,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cloud.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class Publisher:
    """A paho MQTT 5 publisher standing in for gateways: QoS 1, waits for every PUBACK."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self._mqtt = mqtt
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"pub-{os.getpid()}-{port}", protocol=mqtt.MQTTv5
        )
        self.client.max_inflight_messages_set(200)
        self.client.max_queued_messages_set(0)
        self.pending: list[mqtt.MQTTMessageInfo] = []
        connected = threading.Event()
        self.client.on_connect = lambda *a: connected.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not connected.wait(15):
            self.close()
            raise TimeoutError("publisher did not connect")

    def publish(
        self, gateway: str, device: str, payload: bytes, user: list[tuple[str, str]] | None = None
    ) -> None:
        """Queue one QoS 1 publish (paho sends up to 200 in flight); `flush()` waits."""
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = user or [("gw-received-ms", str(int(time.time() * 1000)))]
        self.pending.append(
            self.client.publish(
                f"citysense/v1/{gateway}/{device}/records", payload, qos=1, properties=props
            )
        )

    def flush(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for info in self.pending:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            if not info.is_published():
                raise TimeoutError("a publish was never acknowledged by the broker")
        self.pending.clear()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def wait_until(pred: object, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what} not met within {timeout} s")


def raw_publish(port: int, pki: dict[str, Path], identity: str, topic: str, body: bytes) -> int:
    """One QoS 1 publish, not retained, over mTLS as `identity` (its certificate in `pki`);
    the broker's PUBACK reason code."""
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"test-{identity}-{os.getpid()}",
        protocol=mqtt.MQTTv5,
    )
    c.tls_set(
        ca_certs=str(pki["ca"]),
        certfile=str(pki[f"{identity}_cert"]),
        keyfile=str(pki[f"{identity}_key"]),
    )
    codes: list[int] = []
    done = threading.Event()
    c.on_publish = lambda c_, u, mid, rc, p=None: (codes.append(rc.value), done.set())
    c.on_connect = lambda c_, u, f, rc, p=None: c_.publish(topic, body, qos=1)
    c.connect("localhost", port)
    c.loop_start()
    try:
        assert done.wait(15), "no PUBACK"
    finally:
        c.disconnect()
        c.loop_stop()
    return codes[0]
