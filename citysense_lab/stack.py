"""The whole system on one machine, from the real parts.

A `Lab` makes a certificate authority and certificates with `citysense-provision`, starts
a real broker (Mosquitto with mTLS and an ACL when it is installed, else amqtt), enrolls
emulated nodes through their REPL exactly as a technician would (`deploy`, `enroll`),
runs them with `citysense-emulator run`, runs the gateway as a process, and as the cloud
side either verifies everything that reaches the broker with an independent consumer
(`cloud="consumer"`, any broker) or runs `citysense-cloud ingest` into SQLite
(`cloud="ingest"`, Mosquitto: the ingest needs MQTT 5). Every process is in its own
process group and is stopped by `close()`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from citysense_formats import registry_entry

from .broker import AmqttBroker, BrokerTLS, Mosquitto, acl_for, have_mosquitto
from .consumer import Consumer
from .ingest import CloudIngest
from .noise import NoiseConfig, NoiseProxy
from .procs import Proc, Reaper, wait_until
from .relay import Relay


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tool(name: str) -> str:
    """A console script of this installation (next to the running interpreter)."""
    exe = Path(sys.executable).parent / name
    if exe.exists():
        return str(exe)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: install citysense (scripts/setup.sh)")
    return found


class LabError(RuntimeError):
    pass


BROKER_QUEUE_LIMIT = 100_000
"""Mosquitto's max_queued_messages in the lab (its default 1000 silently drops what is
queued for an offline session beyond it; hours of the lab's traffic fit in this)."""


@dataclass
class Node:
    index: int
    device_id: str
    unique_id: str
    flash: Path
    link: Path  # the emulator's own pty
    gateway_link: Path  # what the gateway opens (the noise proxy's pty, or `link`)
    log: Path
    proc: Proc | None = None
    proxy: NoiseProxy | None = None
    public_key: bytes = b""

    def events(self) -> list[dict[str, Any]]:
        """The node's own event log (JSON lines the emulator prints)."""
        out: list[dict[str, Any]] = []
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return out
        for line in text.splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def created_seqs(self) -> list[int]:
        return [int(e["seq"]) for e in self.events() if e.get("ev") == "record"]


@dataclass
class LabOptions:
    nodes: int = 3
    gateway_id: str = "gw-01"
    interval_s: int = 2
    batch: int = 1
    broker: str = "auto"  # auto | mosquitto | amqtt
    queue_max_bytes: str = "64MB"
    noise: NoiseConfig | None = None
    heap: str = "96k"
    metrics: bool = True
    metrics_token: str | None = None  # the status page and /metrics then need it
    uplink_relay: bool = False  # gateway reaches the broker through a cuttable relay
    cloud: str = "consumer"  # consumer | ingest (citysense-cloud ingest, needs Mosquitto)
    extra_env: dict[str, str] = field(default_factory=dict)


class Lab:
    def __init__(self, workdir: Path, opts: LabOptions, say: Callable[[str], None] = print):
        self.dir = workdir
        self.opts = opts
        self.say = say
        self.reaper = Reaper()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.registry = self.dir / "registry"
        self.registry.mkdir(exist_ok=True)
        self.state = self.dir / "gateway-state"
        self.links = self.dir / "links"
        self.links.mkdir(exist_ok=True)
        self.env = dict(os.environ, CITYSENSE_AUDIT=str(self.dir / "audit.jsonl"))
        self.env.update(opts.extra_env)
        self.nodes: list[Node] = []
        self.broker: Mosquitto | AmqttBroker | None = None
        self.broker_port = _free_port()
        self.metrics_port = _free_port()
        self.gateway: Proc | None = None
        self.gateway_starts = 0
        self.consumer: Consumer | None = None
        self.ingest: CloudIngest | None = None
        self.relay: Relay | None = None
        self.op_key = self.dir / "operator" / "operator.key"
        self.release_key = self.dir / "operator" / "release.key"  # signs firmware bundles

    # -- set-up ------------------------------------------------------------------------
    def provision(self, *args: str, timeout: float = 60.0) -> str:
        argv = [tool("citysense-provision"), *args]
        res = subprocess.run(
            argv, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if res.returncode != 0:
            raise LabError(f"{' '.join(argv[1:3])}: {(res.stderr or res.stdout).strip()}")
        return res.stdout

    def make_pki(self) -> None:
        pki = self.dir / "pki"
        self.provision("ca", "init", "--dir", str(pki / "ca"))
        self.provision(
            "ca", "broker-cert", "--ca", str(pki / "ca"), "--out", str(pki / "broker"),
            "--dns", "localhost", "--ip", "127.0.0.1",
        )  # fmt: skip
        # client certificates (CN = the broker user the ACL names): the gateway, the
        # consumer, the cloud ingest and the operator's command tool (command send)
        for who in (self.opts.gateway_id, "consumer", "ingest", "operator"):
            self.provision(
                "gateway-cert", "--gateway-id", who, "--out", str(pki / who),
                "--ca", str(pki / "ca"),
            )  # fmt: skip
        self.op_key.parent.mkdir(exist_ok=True)
        self.provision("operator-key", "init", "--out", str(self.op_key))
        self.provision("release-key", "--out", str(self.release_key))

    def tls(self, who: str) -> BrokerTLS:
        pki = self.dir / "pki"
        if who == "broker":
            return BrokerTLS(pki / "ca" / "ca.crt", pki / "broker" / "broker.crt",
                             pki / "broker" / "broker.key")  # fmt: skip
        return BrokerTLS(
            pki / "ca" / "ca.crt", pki / who / "gateway.crt", pki / who / "gateway.key"
        )

    def start_broker(self) -> None:
        kind = self.opts.broker
        if kind == "auto":
            kind = "mosquitto" if have_mosquitto() else "amqtt"
        bdir = self.dir / "broker"
        bdir.mkdir(exist_ok=True)
        if kind == "mosquitto":
            # the ingest's session must keep what is queued for it while it is away:
            # max_queued_messages far above Mosquitto's default 1000 (docs/cloud.md)
            self.broker = Mosquitto(
                bdir, self.broker_port, self.tls("broker"), acl_for([self.opts.gateway_id]),
                limits=(100, BROKER_QUEUE_LIMIT),
            )  # fmt: skip
        elif self.opts.cloud == "ingest":
            raise LabError(
                "the cloud ingest needs an MQTT 5 broker with shared subscriptions: "
                "install mosquitto (apt-get install mosquitto); amqtt speaks MQTT 3.1.1 only"
            )
        else:
            self.broker = AmqttBroker(bdir, self.broker_port, self.tls("broker"))
        self.broker.start()

    def repl_enroll(
        self, name: str, uid: str, device_id: str, *extra: str
    ) -> tuple[Path, dict[str, Any]]:
        """A fresh flash folder `flash/NAME` flashed and enrolled as `device_id` the way a
        technician does it: `citysense-emulator repl` on a pty, `citysense-provision
        deploy` and `enroll` (plus `extra` enroll arguments) against it. Returns the flash
        folder and enroll's JSON summary."""
        flash = self.dir / "flash" / name
        flash.mkdir(parents=True, exist_ok=True)
        repl = self.links / f"{name}.repl"
        proc = self.reaper.add(
            Proc(
                f"repl-{name}",
                [tool("citysense-emulator"), "repl", "--flash", str(flash), "--port", str(repl),
                 "--unique-id", uid],
                self.dir / f"{name}-repl.log",
                env=self.env,
            ).start()
        )  # fmt: skip
        try:
            wait_until(repl.exists, 20, f"the REPL pty of {name}")
            self.provision("deploy", "--port", str(repl), "--source", timeout=120)
            out = self.provision(
                "enroll", "--port", str(repl), "--registry", str(self.registry),
                "--device-id", device_id, "--operator-pub", f"{self.op_key}.pub",
                *self._release_pub(),
                "--interval", str(self.opts.interval_s), "--batch", str(self.opts.batch),
                "--json", *extra,
            )  # fmt: skip
        finally:
            proc.stop(timeout=5)
        summary: dict[str, Any] = json.loads(out)
        return flash, summary

    def _release_pub(self) -> list[str]:
        pub = Path(f"{self.release_key}.pub")
        return ["--release-pub", str(pub)] if pub.exists() else []

    def enroll_node(self, i: int) -> Node:
        device_id = f"node-{i + 1}"
        uid = f"02c17e{i + 1:06x}"
        flash, _ = self.repl_enroll(device_id, uid, device_id)
        node = Node(
            index=i,
            device_id=device_id,
            unique_id=uid,
            flash=flash,
            link=self.links / f"{device_id}.node",
            gateway_link=self.links / f"{device_id}.tty",
            log=self.dir / f"{device_id}.log",
            public_key=bytes.fromhex(self.registry_key(device_id)),
        )
        self.nodes.append(node)
        return node

    def copy_to(self, dest: Path, opts: LabOptions | None = None) -> Lab:
        """A new lab in `dest` with this one's certificates, registry and enrolled flash
        (enrollment is done once through the REPL; each scenario starts from a copy)."""
        for part in ("pki", "operator", "registry", "flash"):
            if (self.dir / part).exists():
                shutil.copytree(self.dir / part, dest / part, dirs_exist_ok=True)
        lab = Lab(dest, opts or self.opts, self.say)
        for n in self.nodes[: lab.opts.nodes]:
            lab.nodes.append(
                Node(
                    index=n.index,
                    device_id=n.device_id,
                    unique_id=n.unique_id,
                    flash=dest / "flash" / n.device_id,
                    link=lab.links / f"{n.device_id}.node",
                    gateway_link=lab.links / f"{n.device_id}.tty",
                    log=dest / f"{n.device_id}.log",
                    public_key=n.public_key,
                )
            )
        return lab

    def cloud_config(self) -> Path:
        """citysense-cloud's --config for the operator: the broker with the operator's
        client certificate, the registry, the operator key, a state dir."""
        tls = self.tls("operator")
        path = self.dir / "cloud.toml"
        path.write_text(
            f"""[broker]
url = "mqtts://localhost:{self.broker_port}"
ca_file = "{tls.ca_file}"
cert_file = "{tls.cert_file}"
key_file = "{tls.key_file}"
[registry]
path = "{self.registry}"
[operator]
key_file = "{self.op_key}"
[state]
dir = "{self.dir / "cloud-state"}"
"""
        )
        return path

    def registry_key(self, device_id: str) -> str:
        data = (self.registry / f"{device_id}.json").read_bytes()
        return registry_entry.parse(data, device_id).public_key.hex()

    def keys(self) -> dict[str, bytes]:
        """Every device's public key as the cloud knows it: the registry (revoked devices
        too: what they signed before revocation still verifies), plus the lab's nodes."""
        keys: dict[str, bytes] = {}
        for path in sorted(self.registry.glob("*.json")):
            entry = registry_entry.parse(path.read_bytes(), path.stem)
            keys[entry.device_id] = entry.public_key
        keys.update({n.device_id: n.public_key for n in self.nodes})
        return keys

    # -- running -----------------------------------------------------------------------
    def start_node(self, node: Node) -> None:
        target = node.link if self.opts.noise is not None else node.gateway_link
        node.proc = self.reaper.add(
            Proc(
                f"node-{node.device_id}",
                [tool("citysense-emulator"), "run", "--flash", str(node.flash), "--link",
                 str(target), "--unique-id", node.unique_id, "--heap", self.opts.heap,
                 "--seed", str(node.index + 1)],
                node.log,
                env=self.env,
            ).start()
        )  # fmt: skip
        wait_until(target.exists, 20, f"the link pty of {node.device_id}")
        if self.opts.noise is not None and node.proxy is None:
            node.proxy = NoiseProxy(node.link, node.gateway_link, self.opts.noise, node.index + 7)
            node.proxy.start()

    def power_cut(self, node: Node) -> None:
        if node.proc is not None:
            node.proc.kill9()

    def gateway_config(self) -> Path:
        tls = self.tls(self.opts.gateway_id)
        port = self.broker_port
        if self.opts.uplink_relay:
            if self.relay is None:
                self.relay = Relay(self.broker_port)
            port = self.relay.port
        # amqtt speaks MQTT 3.1.1 only, and the gateway never falls back by itself
        amqtt = self.broker is not None and self.broker.kind != "mosquitto"
        protocol = 'protocol = "3.1.1"\n' if amqtt else ""
        text = f"""
[gateway]
id = "{self.opts.gateway_id}"
state_dir = "{self.state}"
registry = "{self.registry}"
operator_key = "{self.op_key}.pub"

[[serial]]
port = "{self.links}/*.tty"
baud = 115200

[uplink]
url = "mqtts://localhost:{port}"
ca_file = "{tls.ca_file}"
cert_file = "{tls.cert_file}"
key_file = "{tls.key_file}"
{protocol}
[queue]
max_bytes = "{self.opts.queue_max_bytes}"

[time]
# a lab runs where no NTP client may have synchronised the clock: send TIME anyway
require_sync = false
"""
        if Path(f"{self.release_key}.pub").exists():
            text += f'\n[ota]\nrelease_key = "{self.release_key}.pub"\n'
        if self.opts.metrics:
            text += f'\n[metrics]\nlisten = "127.0.0.1:{self.metrics_port}"\n'
            if self.opts.metrics_token:
                text += f'token = "{self.opts.metrics_token}"\n'
        path = self.dir / "gateway.toml"
        path.write_text(text)
        return path

    def start_gateway(self) -> None:
        cfg = self.gateway_config()
        self.gateway_starts += 1
        self.gateway = self.reaper.add(
            Proc(
                f"gateway-{self.gateway_starts}",
                [tool("citysense-gateway"), "run", "--config", str(cfg)],
                self.dir / "gateway.log",
                env=self.env,
            ).start()
        )

    def kill_gateway(self) -> None:
        if self.gateway is not None:
            self.gateway.kill9()
            self.gateway = None

    def gateway_status(self) -> dict[str, Any]:
        res = subprocess.run(
            [tool("citysense-gateway"), "status", "--config", str(self.dir / "gateway.toml"),
             "--json"],
            env=self.env, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if res.returncode != 0:
            raise LabError(f"gateway status: {(res.stderr or res.stdout).strip()}")
        data: dict[str, Any] = json.loads(res.stdout)
        return data

    def start_consumer(self) -> Consumer:
        mqtt5 = self.broker is None or self.broker.kind == "mosquitto"
        self.consumer = Consumer(self.broker_port, self.keys(), self.tls("consumer"), mqtt5=mqtt5)
        self.consumer.start()
        return self.consumer

    def start_ingest(self) -> CloudIngest:
        """`citysense-cloud ingest` with the ingest's certificate into `cloud.sqlite3`."""
        if self.ingest is None:
            self.ingest = CloudIngest(
                self.dir, self.broker_port, self.tls("ingest"), self.registry, tool, self.env
            )
        try:
            self.reaper.add(self.ingest.start())
        except (RuntimeError, AssertionError) as exc:
            raise LabError(str(exc)) from exc
        return self.ingest

    def prepare(self) -> None:
        """Certificates, operator key and enrolled nodes: what a technician does."""
        self.say("certificates: CA, broker, gateway, consumer, ingest; operator key")
        self.make_pki()
        for i in range(self.opts.nodes):
            node = self.enroll_node(i)
            self.say(f"enrolled {node.device_id} through its REPL")

    def run(self) -> None:
        """Broker, cloud side, nodes and gateway, on prepared certificates and nodes."""
        self.say("broker: starting")
        self.start_broker()
        if self.opts.cloud == "ingest":
            self.say("cloud: citysense-cloud ingest (SQLite), subscribing")
            self.start_ingest()
        else:
            self.start_consumer()
        for node in self.nodes:
            self.start_node(node)
        self.start_gateway()

    def up(self) -> None:
        """Everything, in the order a deployment would bring it up."""
        self.prepare()
        self.run()

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.stop()
        for node in self.nodes:
            if node.proxy is not None:
                node.proxy.stop()
        self.reaper.stop_all()
        if self.relay is not None:
            self.relay.close()
        if self.broker is not None:
            self.broker.stop()
