"""Gateway configuration: TOML, validated at start with one error line per problem."""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from citysense_formats import devid, operator_key

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
    "TIB": 1024**4,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
}
_MIN_QUEUE = 64 * 1024
_MIN_OTA_CACHE = 64 * 1024
_MIN_TOKEN = 16


class ConfigError(Exception):
    """The configuration is not usable; `.problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


DEFAULT_ENDURANCE = 117 * 1000**4
"""Bytes the state directory's storage is rated to take: the TBW rating of a 128 GB
SanDisk High Endurance card (about 117 TB written). `status` projects the gateway's
measured writes against it; set `[gateway] storage_endurance` to your card's rating."""


@dataclass(frozen=True, slots=True)
class SerialConfig:
    port: str
    baud: int = 115200


@dataclass(frozen=True, slots=True)
class UplinkConfig:
    url: str
    host: str
    port: int
    tls: bool
    client_id: str
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    window: int = 32
    keepalive: int = 30
    timeout: int = 10
    protocol: str = "5"
    """MQTT version, "5" (default) or "3.1.1"; only ever what is configured, never a
    fallback: over 3.1.1 a broker acknowledges a publish its ACL denies and drops it."""
    require_subscriber: bool = False
    """Keep a record whose PUBACK is 0x10 (No matching subscribers) and send it again,
    instead of deleting it: for a deployment where a citysense-cloud ingest holds the
    records subscription, so 0x10 means the broker threw the record away (a broker
    restart before the ingest subscribed again, docs/cloud.md)."""


DEFAULT_OTA_CACHE = 4 * 1024**2


@dataclass(frozen=True, slots=True)
class OtaConfig:
    """[ota]: firmware bundles. Without release_key the gateway caches and serves none."""

    release_key: bytes | None = None
    release_key_path: Path | None = None
    cache_dir: Path | None = None
    """None: `<state_dir>/ota` (resolved by `Config.ota_cache_dir`)."""
    cache_max_bytes: int = DEFAULT_OTA_CACHE


@dataclass(frozen=True, slots=True)
class Config:
    gateway_id: str
    state_dir: Path
    registry: Path
    serial: tuple[SerialConfig, ...]
    uplink: UplinkConfig
    queue_max_bytes: int = 512 * 1000**2
    commit_max_records: int = 256
    commit_max_delay_s: float = 0.005
    metrics_listen: tuple[str, int] | None = None
    metrics_token: str | None = field(default=None, repr=False)
    operator_key: bytes | None = None
    operator_key_path: Path | None = None
    time_interval_s: float = 3600.0
    time_require_sync: bool = True
    """Send TIME to nodes only while the kernel reports the clock synchronised."""
    storage_endurance: int = DEFAULT_ENDURANCE
    ota: OtaConfig = OtaConfig()

    @property
    def ota_cache_dir(self) -> Path:
        return self.ota.cache_dir or self.state_dir / "ota"

    @property
    def db_path(self) -> Path:
        return self.state_dir / "queue.sqlite3"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "status.json"


def parse_size(text: object) -> int:
    """`"512MB"`, `"64 MiB"`, `1048576` -> bytes; ValueError on anything else."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text <= 0:
            raise ValueError(f"expected a positive size, got {text}")
        return text
    if not isinstance(text, str):
        raise ValueError(f"expected a size such as '512MB', got {text!r}")
    m = _SIZE_RE.match(text)
    unit = m.group(2).upper() if m else ""
    if m is None or unit not in _UNITS:
        raise ValueError(f"expected a size such as '512MB' or '64MiB', got {text!r}")
    value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"expected a positive size, got {text!r}")
    return value


class _Reader:
    """Collects problems while reading typed values out of the TOML tree."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.problems: list[str] = []

    def table(self, name: str, *, required: bool = True) -> dict[str, Any]:
        value = self.data.get(name)
        if value is None:
            if required:
                self.problems.append(f"[{name}]: missing table")
            return {}
        if not isinstance(value, dict):
            self.problems.append(f"{name}: expected a table, got {type(value).__name__}")
            return {}
        return value

    def str_(
        self, t: dict[str, Any], prefix: str, key: str, *, required: bool = True
    ) -> str | None:
        value = t.get(key)
        if value is None:
            if required:
                self.problems.append(f"{prefix}.{key}: missing")
            return None
        if not isinstance(value, str) or not value:
            self.problems.append(f"{prefix}.{key}: expected a non-empty string, got {value!r}")
            return None
        return value

    def int_(self, t: dict[str, Any], prefix: str, key: str, default: int, lo: int, hi: int) -> int:
        value = t.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.problems.append(f"{prefix}.{key}: expected an integer {lo}..{hi}, got {value!r}")
            return default
        return value

    def file_(self, t: dict[str, Any], prefix: str, key: str, *, required: bool) -> Path | None:
        text = self.str_(t, prefix, key, required=required)
        if text is None:
            return None
        path = Path(text)
        if not path.is_file():
            self.problems.append(f"{prefix}.{key}: file not found: {text}")
            return None
        return path

    def unknown(self, t: dict[str, Any], prefix: str, known: set[str]) -> None:
        for key in sorted(set(t) - known):
            self.problems.append(f"{prefix}.{key}: unknown key")


def _read_endurance(r: _Reader) -> int:
    g = r.data.get("gateway")
    text = g.get("storage_endurance") if isinstance(g, dict) else None
    if text is None:
        return DEFAULT_ENDURANCE
    try:
        return parse_size(text)
    except ValueError as exc:
        r.problems.append(f"gateway.storage_endurance: {exc} (the card's TBW rating, e.g. '117TB')")
        return DEFAULT_ENDURANCE


def _read_gateway(r: _Reader) -> tuple[str, Path, Path, bytes | None, Path | None]:
    g = r.table("gateway")
    r.unknown(g, "gateway", {"id", "state_dir", "registry", "operator_key", "storage_endurance"})
    gid = r.str_(g, "gateway", "id") or "?"
    if gid != "?" and not devid.is_valid(gid):
        r.problems.append(
            f"gateway.id: expected letters, digits, '.', '_' or '-' (1-64, no '/', '+', '#'), "
            f"got {gid!r}"
        )
    state_dir = Path(r.str_(g, "gateway", "state_dir") or ".")
    registry = Path(r.str_(g, "gateway", "registry") or ".")
    if "registry" in g and not registry.is_dir():
        r.problems.append(f"gateway.registry: not a directory: {registry}")
    op_path = r.file_(g, "gateway", "operator_key", required=False)
    op_key = None
    if op_path is not None:
        try:
            op_key = operator_key.parse(op_path.read_bytes())
        except OSError as exc:
            r.problems.append(f"gateway.operator_key: cannot read {op_path}: {exc.strerror}")
        except operator_key.OperatorKeyError as exc:
            r.problems.append(f"gateway.operator_key: {op_path} {exc} (give the operator .pub)")
    return gid, state_dir, registry, op_key, op_path


def _read_serial(r: _Reader) -> tuple[SerialConfig, ...]:
    items = r.data.get("serial", [])
    if not isinstance(items, list):
        r.problems.append("serial: expected [[serial]] tables")
        return ()
    out = []
    for i, t in enumerate(items):
        prefix = f"serial[{i}]"
        if not isinstance(t, dict):
            r.problems.append(f"{prefix}: expected a table")
            continue
        r.unknown(t, prefix, {"port", "baud"})
        port = r.str_(t, prefix, "port")
        baud = r.int_(t, prefix, "baud", 115200, 1200, 4_000_000)
        if port is not None:
            if not port.startswith("/"):
                r.problems.append(f"{prefix}.port: expected an absolute path or glob, got {port!r}")
            out.append(SerialConfig(port, baud))
    return tuple(out)


def _read_uplink(r: _Reader, gid: str) -> UplinkConfig:
    u = r.table("uplink")
    r.unknown(
        u,
        "uplink",
        {
            "url",
            "ca_file",
            "cert_file",
            "key_file",
            "client_id",
            "username",
            "password",
            "window",
            "keepalive",
            "timeout",
            "protocol",
            "require_subscriber",
        },
    )
    url = r.str_(u, "uplink", "url") or ""
    parts = urlsplit(url)
    host, port, tls = "", 0, False
    if url and parts.scheme not in ("mqtt", "mqtts"):
        r.problems.append(f"uplink.url: expected mqtt:// or mqtts://, got {url!r}")
    elif url:
        tls = parts.scheme == "mqtts"
        host = parts.hostname or ""
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            r.problems.append(f"uplink.url: bad port in {url!r}")
        if not host:
            r.problems.append(f"uplink.url: missing host in {url!r}")
    ca = r.file_(u, "uplink", "ca_file", required=tls)
    cert = r.file_(u, "uplink", "cert_file", required=tls)
    key = r.file_(u, "uplink", "key_file", required=tls)
    if (cert is None) != (key is None) and not tls:
        r.problems.append("uplink.cert_file/key_file: give both or neither")
    return UplinkConfig(
        url=url,
        host=host,
        port=port,
        tls=tls,
        client_id=r.str_(u, "uplink", "client_id", required=False) or f"citysense-{gid}",
        ca_file=ca,
        cert_file=cert,
        key_file=key,
        username=r.str_(u, "uplink", "username", required=False),
        password=r.str_(u, "uplink", "password", required=False),
        window=r.int_(u, "uplink", "window", 32, 1, 1000),
        keepalive=r.int_(u, "uplink", "keepalive", 30, 5, 3600),
        timeout=r.int_(u, "uplink", "timeout", 10, 1, 120),
        protocol=_read_protocol(r, u),
        require_subscriber=_read_bool(r, u, "uplink", "require_subscriber", False),
    )


def _read_bool(r: _Reader, t: dict[str, Any], prefix: str, key: str, default: bool) -> bool:
    value = t.get(key, default)
    if not isinstance(value, bool):
        r.problems.append(f"{prefix}.{key}: expected true or false, got {value!r}")
        return default
    return value


PROTOCOLS = ("5", "3.1.1")


def _read_protocol(r: _Reader, u: dict[str, Any]) -> str:
    value = u.get("protocol", "5")
    if value not in PROTOCOLS:
        r.problems.append(f'uplink.protocol: expected "5" or "3.1.1", got {value!r}')
        return "5"
    return str(value)


def _read_time(r: _Reader) -> tuple[bool, float]:
    t = r.table("time", required=False)
    r.unknown(t, "time", {"require_sync", "interval_s"})
    require = t.get("require_sync", True)
    if not isinstance(require, bool):
        r.problems.append(f"time.require_sync: expected true or false, got {require!r}")
        require = True
    interval = t.get("interval_s", 3600)
    if (
        isinstance(interval, bool)
        or not isinstance(interval, int | float)
        or not (0.1 <= interval <= 86400)
    ):
        r.problems.append(f"time.interval_s: expected a number 0.1..86400, got {interval!r}")
        interval = 3600
    return require, float(interval)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _read_listen(r: _Reader) -> tuple[tuple[str, int] | None, str | None]:
    """[metrics] listen = "HOST:PORT" (the status page and /metrics), token = "..."."""
    m = r.table("metrics", required=False)
    r.unknown(m, "metrics", {"listen", "token"})
    listen = r.str_(m, "metrics", "listen", required=False)
    token = r.str_(m, "metrics", "token", required=False)
    if token is not None and (len(token) < _MIN_TOKEN or not token.isprintable()):
        r.problems.append(
            f"metrics.token: expected at least {_MIN_TOKEN} printable characters"
            " (e.g. from `openssl rand -hex 16`)"
        )
    if listen is None:
        return None, token
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        r.problems.append(f"metrics.listen: expected HOST:PORT, got {listen!r}")
        return None, token
    host = host.strip("[]")
    if token is None and not is_loopback(host):
        r.problems.append(
            f"metrics.listen: {host} is not a loopback address: set metrics.token so the"
            " status page and /metrics need it, or listen on 127.0.0.1"
        )
    return (host, int(port_text)), token


def _read_queue(r: _Reader) -> tuple[int, int, float]:
    q = r.table("queue", required=False)
    r.unknown(q, "queue", {"max_bytes", "commit_max_records", "commit_max_delay_ms"})
    max_bytes = 512 * 1000**2
    if "max_bytes" in q:
        try:
            max_bytes = parse_size(q["max_bytes"])
        except ValueError as exc:
            r.problems.append(f"queue.max_bytes: {exc}")
        else:
            if max_bytes < _MIN_QUEUE:
                r.problems.append(f"queue.max_bytes: at least {_MIN_QUEUE} bytes, got {max_bytes}")
    n = r.int_(q, "queue", "commit_max_records", 256, 1, 10000)
    delay = r.int_(q, "queue", "commit_max_delay_ms", 5, 0, 1000)
    return max_bytes, n, delay / 1000.0


def _read_ota(r: _Reader) -> OtaConfig:
    o = r.table("ota", required=False)
    r.unknown(o, "ota", {"release_key", "cache_dir", "cache_max_bytes"})
    key_path = r.file_(o, "ota", "release_key", required=False)
    key = None
    if key_path is not None:
        try:
            key = operator_key.parse(key_path.read_bytes())
        except OSError as exc:
            r.problems.append(f"ota.release_key: cannot read {key_path}: {exc.strerror}")
        except operator_key.OperatorKeyError as exc:
            r.problems.append(f"ota.release_key: {key_path} {exc} (give the release .pub)")
    cache_dir = r.str_(o, "ota", "cache_dir", required=False)
    max_bytes = DEFAULT_OTA_CACHE
    if "cache_max_bytes" in o:
        try:
            max_bytes = parse_size(o["cache_max_bytes"])
        except ValueError as exc:
            r.problems.append(f"ota.cache_max_bytes: {exc}")
        else:
            if max_bytes < _MIN_OTA_CACHE:
                r.problems.append(
                    f"ota.cache_max_bytes: at least {_MIN_OTA_CACHE} bytes (one bundle),"
                    f" got {max_bytes}"
                )
    return OtaConfig(key, key_path, Path(cache_dir) if cache_dir else None, max_bytes)


def load_config(path: Path | str) -> Config:
    """Read and validate; raises ConfigError listing every problem found."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text"]) from exc
    r = _Reader(data)
    r.unknown(data, "", {"gateway", "serial", "uplink", "queue", "metrics", "time", "ota"})
    r.problems = [p.lstrip(".") for p in r.problems]
    gid, state_dir, registry, op_key, op_path = _read_gateway(r)
    serial = _read_serial(r)
    uplink = _read_uplink(r, gid)
    max_bytes, n, delay = _read_queue(r)
    listen, token = _read_listen(r)
    require_sync, time_interval = _read_time(r)
    endurance = _read_endurance(r)
    ota = _read_ota(r)
    if r.problems:
        raise ConfigError(r.problems)
    return Config(
        gateway_id=gid,
        state_dir=state_dir,
        registry=registry,
        serial=serial,
        uplink=uplink,
        queue_max_bytes=max_bytes,
        commit_max_records=n,
        commit_max_delay_s=delay,
        metrics_listen=listen,
        metrics_token=token,
        operator_key=op_key,
        operator_key_path=op_path,
        time_interval_s=time_interval,
        time_require_sync=require_sync,
        storage_endurance=endurance,
        ota=ota,
    )
