"""The three systems under test, each with its configuration written here.

citysense  the citysense gateway (`python -m gateway.cli run`), scripted nodes over ptys.
bridge     a local Mosquitto (persistence on) bridged to the cloud broker; sources publish
           to it with QoS 1. Its own process (the one killed) is the local Mosquitto.
tb         ThingsBoard IoT Gateway (PyPI thingsboard-gateway, in .cache/bench-venv) with its
           MQTT connector subscribed to a local ingress Mosquitto and SQLite storage,
           sending to the cloud broker with the ThingsBoard gateway MQTT API. Its own
           process (the one killed) is the TB gateway; the ingress broker keeps running.
"""

from __future__ import annotations

import json
import os
import pwd
import sys
from pathlib import Path

from procs import Tracked, free_port, wait_port

REPO = Path(__file__).resolve().parents[2]
MOSQUITTO = "/usr/sbin/mosquitto"
TB_VENV = REPO / ".cache" / "bench-venv"


def broker_dir(d: Path) -> Path:
    """A persistence directory Mosquitto can write after it drops root to its own user."""
    d.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("mosquitto")
        except KeyError:
            return d
        os.chown(d, pw.pw_uid, pw.pw_gid)
    return d


def cloud_conf(d: Path, port: int) -> Path:
    """The "cloud": plain Mosquitto on loopback; it keeps sessions across its restart."""
    broker_dir(d)
    conf = d / "cloud.conf"
    conf.write_text(
        f"""listener {port} 127.0.0.1
allow_anonymous true
persistence true
persistence_location {d}/
autosave_interval 0
max_queued_messages 0
max_inflight_messages 100
log_dest stderr
log_type error
log_type warning
"""
    )
    return conf


class System:
    name = ""
    source_mode = "mqtt"
    consumer_kind = ""

    def __init__(self, d: Path, cloud_port: int) -> None:
        self.dir = d
        self.cloud_port = cloud_port
        d.mkdir(parents=True, exist_ok=True)
        self.own: Tracked  # the gateway process: killed in the kill phase
        self.aux: list[Tracked] = []
        self.source_port = 0

    def tracked(self) -> list[Tracked]:
        return [self.own, *self.aux]

    def settings(self) -> dict[str, object]:
        return {}

    def start(self) -> None:
        for t in self.aux:
            t.start()
        self.own.start()
        self.wait_ready()

    def wait_ready(self) -> None:
        pass

    def restart_own(self) -> None:
        self.own.start()

    def stop(self) -> None:
        self.own.terminate()
        for t in self.aux:
            t.terminate()


class Citysense(System):
    name = "citysense"
    source_mode = "pty"
    consumer_kind = "citysense"

    def __init__(self, d: Path, cloud_port: int) -> None:
        super().__init__(d, cloud_port)
        self.nodes = d / "nodes"
        self.registry = d / "registry"
        self.nodes.mkdir(exist_ok=True)
        self.registry.mkdir(exist_ok=True)
        conf = d / "gateway.toml"
        conf.write_text(
            f"""[gateway]
id = "gw-bench"
state_dir = "{d / "state"}"
registry = "{self.registry}"

[[serial]]
port = "{self.nodes}/tty-*"
baud = 115200

[uplink]
url = "mqtt://127.0.0.1:{cloud_port}"
{os.environ.get("BENCH_CITYSENSE_UPLINK", "")}

[queue]
max_bytes = "512MB"
{os.environ.get("BENCH_CITYSENSE_QUEUE", "")}

[metrics]
listen = "127.0.0.1:{free_port()}"

[time]
require_sync = false
"""
        )
        self.conf = conf
        self.own = Tracked(
            "citysense-gateway",
            [sys.executable, "-m", "gateway.cli", "run", "--config", str(conf)],
            d / "gateway.log",
            cwd=REPO,
        )

    def settings(self) -> dict[str, object]:
        return {"config": self.conf.read_text()}


class Bridge(System):
    name = "mosquitto-bridge"
    consumer_kind = "bridge"

    def __init__(self, d: Path, cloud_port: int) -> None:
        super().__init__(d, cloud_port)
        self.source_port = free_port()
        broker_dir(d / "db")
        conf = d / "local.conf"
        conf.write_text(
            f"""# local broker on the gateway, bridged to the cloud (reliability settings)
listener {self.source_port} 127.0.0.1
allow_anonymous true
# keep queued messages and sessions on disk across restarts
persistence true
persistence_location {d / "db"}/
# write the in-memory database to disk every second (default 1800 s)
autosave_interval 1
# no cap on the per-client queue (default 1000: beyond it messages are dropped)
max_queued_messages 0
log_dest stderr
log_type error
log_type warning

connection cloud
address 127.0.0.1:{cloud_port}
bridge_protocol_version mqttv311
clientid bench-bridge
# a persistent session on the cloud broker: QoS 1 messages survive a reconnect
cleansession false
# forward with QoS 1 (PUBACK from the cloud before the local copy is released)
topic bench/# out 1
"""
        )
        self.conf = conf
        self.own = Tracked("mosquitto", [MOSQUITTO, "-c", str(conf)], d / "mosquitto.log")

    def wait_ready(self) -> None:
        wait_port(self.source_port, proc=self.own.proc)

    def restart_own(self) -> None:
        self.own.start()
        self.wait_ready()

    def settings(self) -> dict[str, object]:
        return {"mosquitto.conf": self.conf.read_text()}


def tb_installed() -> bool:
    return (TB_VENV / "bin" / "thingsboard-gateway").exists()


class ThingsBoard(System):
    name = "thingsboard-gateway"
    consumer_kind = "tb"

    def __init__(self, d: Path, cloud_port: int) -> None:
        super().__init__(d, cloud_port)
        self.source_port = free_port()
        cfg = d / "config"
        cfg.mkdir(exist_ok=True)
        (d / "data").mkdir(exist_ok=True)
        (d / "logs").mkdir(exist_ok=True)
        ingress = d / "ingress.conf"
        ingress.write_text(
            f"""listener {self.source_port} 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 0
log_dest stderr
log_type error
log_type warning
"""
        )
        main = {
            "thingsboard": {
                "host": "127.0.0.1",
                "port": cloud_port,
                "remoteShell": False,
                "remoteConfiguration": False,
                "latencyDebugMode": False,
                "statistics": {"enable": False, "statsSendPeriodInSeconds": 3600},
                "deviceFiltering": {"enable": False},
                "maxPayloadSizeBytes": 8196,
                "minPackSendDelayMS": 50,
                "minPackSizeToSend": 500,
                "checkConnectorsConfigurationInSeconds": 60,
                "handleDeviceRenaming": False,
                "security": {"type": "accessToken", "accessToken": "bench-token"},
                "qos": 1,
                "reportStrategy": {"type": "ON_RECEIVED"},
                "checkingDeviceActivity": {"checkDeviceInactivity": False},
            },
            "storage": {
                "type": "sqlite",
                "data_file_path": f"{d / 'data'}/",
                "messages_ttl_check_in_hours": 1,
                "messages_ttl_in_days": 7,
                "max_read_records_count": 1000,
            },
            "grpc": {"enabled": False},
            "connectors": [{"type": "mqtt", "name": "MQTT ingress", "configuration": "mqtt.json"}],
        }
        mqtt = {
            "broker": {
                "host": "127.0.0.1",
                "port": self.source_port,
                "clientId": "bench-tb-connector",
                "version": 4,
                "maxMessageNumberPerWorker": 10,
                "maxNumberOfWorkers": 100,
                "cleanSession": False,
                "security": {"type": "anonymous"},
            },
            "mapping": [
                {
                    "topicFilter": "bench/+/data",
                    "subscriptionQos": 1,
                    "converter": {
                        "type": "json",
                        "deviceInfo": {
                            "deviceNameExpressionSource": "message",
                            "deviceNameExpression": "${device}",
                            "deviceProfileExpressionSource": "constant",
                            "deviceProfileExpression": "default",
                        },
                        "sendDataOnlyOnChange": False,
                        "timeout": 60000,
                        "attributes": [],
                        "timeseries": [
                            {"type": "integer", "key": "seq", "value": "${seq}"},
                            {"type": "double", "key": "temp", "value": "${temp}"},
                            {"type": "double", "key": "rh", "value": "${rh}"},
                            {"type": "double", "key": "pm25", "value": "${pm25}"},
                            {"type": "string", "key": "pad", "value": "${pad}"},
                        ],
                    },
                }
            ],
        }
        (cfg / "tb_gateway.json").write_text(json.dumps(main, indent=2))
        (cfg / "mqtt.json").write_text(json.dumps(mqtt, indent=2))
        (cfg / "logs.json").write_text(json.dumps(_tb_logs(d / "logs"), indent=2))
        self.cfg = cfg
        self.aux = [
            Tracked("ingress-mosquitto", [MOSQUITTO, "-c", str(ingress)], d / "ingress.log")
        ]
        env = dict(os.environ, TB_GW_CONFIG_DIR=f"{cfg}/")
        env.pop("VIRTUAL_ENV", None)
        self.own = Tracked(
            "thingsboard-gateway",
            [str(TB_VENV / "bin" / "thingsboard-gateway")],
            d / "tb.log",
            cwd=d,
            env=env,
        )

    def start(self) -> None:
        for t in self.aux:
            t.start()
        wait_port(self.source_port, proc=self.aux[0].proc)
        self.own.start()

    def settings(self) -> dict[str, object]:
        return {
            "tb_gateway.json": json.loads((self.cfg / "tb_gateway.json").read_text()),
            "mqtt.json": json.loads((self.cfg / "mqtt.json").read_text()),
        }


def _tb_logs(d: Path) -> dict[str, object]:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"f": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "formatter": "f",
                "filename": str(d / "tb.log"),
                "level": "INFO",
            }
        },
        "loggers": {
            name: {"handlers": ["file"], "level": "INFO", "propagate": False}
            for name in (
                "service",
                "connector",
                "converter",
                "tb_connection",
                "storage",
                "extension",
            )
        },
        "root": {"level": "WARNING", "handlers": ["file"]},
    }


SYSTEMS = {"citysense": Citysense, "bridge": Bridge, "tb": ThingsBoard}
