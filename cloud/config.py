"""`citysense-cloud --config FILE`: one TOML file for every subcommand.

```toml
[broker]
url = "mqtts://broker.example:8883"   # or mqtt:// for local tests
ca_file = "ca.pem"                     # required for mqtts://
cert_file = "operator.pem"             # client certificate (mTLS)
key_file = "operator.key"
client_id = "citysense-cloud"          # optional; ingest derives its own from --instance
[registry]
path = "registry/"                     # the one-JSON-per-device directory
[operator]
key_file = "operator.key"              # Ed25519 operator signing key (commands)
[database]
url = "sqlite:///var/lib/citysense-cloud/cloud.sqlite3"   # or postgresql://...
[state]
dir = "/var/lib/citysense-cloud"       # command ids, audit log (default: beside the config)
[ingest]
group = "citysense-ingest"             # the shared subscription group (default)
session_expiry = 604800                # s the broker keeps a dead instance's session (7 days)
batch = 500                            # records per database commit (at most)
subscription = "shared"                # or "plain": one instance only (docs/cloud.md)
```

Relative paths are relative to the config file's folder. Every problem is reported, one
line each (ConfigError.problems). Sections a subcommand does not use may be absent: each
subcommand asks for what it needs (`need_*`), so `command log` runs without a broker.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError as _ConfigError


class ConfigError(_ConfigError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    url: str
    host: str
    port: int
    tls: bool
    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None
    client_id: str | None


@dataclass(frozen=True, slots=True)
class IngestConfig:
    group: str = "citysense-ingest"
    session_expiry: int = 7 * 86400
    batch: int = 500
    subscription: str = "shared"


SUBSCRIPTIONS = ("shared", "plain")


_INGEST_INTS = {"session_expiry": (60, 2**32 - 2), "batch": (1, 10_000)}
_GROUP_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def parse_ingest(t: dict[str, Any], problems: list[str]) -> IngestConfig:
    out: dict[str, Any] = {}
    group = _str(t, "ingest", "group", problems)
    if group is not None:
        if len(group) > 64 or not set(group) <= _GROUP_CHARS:
            problems.append(f"ingest.group: expected 1..64 of [A-Za-z0-9._-], got {group!r}")
        else:
            out["group"] = group
    sub = _str(t, "ingest", "subscription", problems)
    if sub is not None:
        if sub not in SUBSCRIPTIONS:
            problems.append(f"ingest.subscription: expected shared or plain, got {sub[:40]!r}")
        else:
            out["subscription"] = sub
    for key, (low, high) in _INGEST_INTS.items():
        v = t.get(key)
        if v is None:
            continue
        if type(v) is not int or not low <= v <= high:
            problems.append(f"ingest.{key}: expected an integer {low}..{high}, got {v!r}")
        else:
            out[key] = v
    return IngestConfig(**out)


@dataclass(frozen=True, slots=True)
class CloudConfig:
    path: Path | None
    broker: BrokerConfig | None
    registry: Path | None
    operator_key: Path | None
    database_url: str | None
    state_dir: Path
    ingest: IngestConfig = IngestConfig()

    def need_broker(self) -> BrokerConfig:
        if self.broker is None:
            raise ConfigError([f"{self._where()}: [broker] url missing (or pass --broker URL)"])
        return self.broker

    def need_registry(self) -> Path:
        if self.registry is None:
            raise ConfigError([f"{self._where()}: [registry] path missing (or --registry DIR)"])
        if not self.registry.is_dir():
            raise ConfigError([f"registry: not a directory: {self.registry}"])
        return self.registry

    def need_operator_key(self) -> Path:
        if self.operator_key is None:
            raise ConfigError(
                [f"{self._where()}: [operator] key_file missing (or --operator-key FILE)"]
            )
        if not self.operator_key.is_file():
            raise ConfigError([f"operator.key_file: file not found: {self.operator_key}"])
        return self.operator_key

    def need_database(self) -> str:
        if self.database_url is None:
            raise ConfigError([f"{self._where()}: [database] url missing (or --database URL)"])
        return self.database_url

    def _where(self) -> str:
        return str(self.path) if self.path else "no --config given"


_KNOWN = {
    "broker": {"url", "ca_file", "cert_file", "key_file", "client_id"},
    "registry": {"path"},
    "operator": {"key_file"},
    "database": {"url"},
    "state": {"dir"},
    "ingest": {"group", "session_expiry", "batch", "subscription"},
}


def _table(data: dict[str, Any], name: str, problems: list[str]) -> dict[str, Any]:
    t = data.get(name, {})
    if not isinstance(t, dict):
        problems.append(f"{name}: expected a table, got {type(t).__name__}")
        return {}
    for key in sorted(set(t) - _KNOWN[name]):
        problems.append(f"{name}.{key}: unknown key")
    return t


def _str(t: dict[str, Any], prefix: str, key: str, problems: list[str]) -> str | None:
    v = t.get(key)
    if v is None:
        return None
    if not isinstance(v, str) or not v:
        problems.append(f"{prefix}.{key}: expected a non-empty string, got {v!r}")
        return None
    return v


def parse_broker(
    url: str, base: Path, t: dict[str, Any], problems: list[str]
) -> BrokerConfig | None:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        problems.append(f"broker.url: expected mqtt:// or mqtts://, got {url!r}")
        return None
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        problems.append(f"broker.url: bad port in {url!r}")
        return None
    if not parts.hostname:
        problems.append(f"broker.url: missing host in {url!r}")
        return None
    files: dict[str, Path | None] = {}
    for key in ("ca_file", "cert_file", "key_file"):
        text = _str(t, "broker", key, problems)
        path = None if text is None else base / text
        if path is not None and not path.is_file():
            problems.append(f"broker.{key}: file not found: {path}")
        elif path is None and tls:
            problems.append(f"broker.{key}: required for mqtts:// (mutual TLS)")
        files[key] = path
    if (files["cert_file"] is None) != (files["key_file"] is None):
        problems.append("broker.cert_file/key_file: give both or neither")
    return BrokerConfig(
        url=url,
        host=parts.hostname,
        port=port,
        tls=tls,
        ca_file=files["ca_file"],
        cert_file=files["cert_file"],
        key_file=files["key_file"],
        client_id=_str(t, "broker", "client_id", problems),
    )


def load(path: Path | None, overrides: dict[str, str | None] | None = None) -> CloudConfig:
    """Read FILE (if given) and apply flag overrides: keys `broker.url`, `registry.path`,
    `operator.key_file`, `database.url`, `state.dir` (None = not given)."""
    data: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{path}: not valid TOML: {exc}"]) from exc
        except UnicodeDecodeError as exc:
            raise ConfigError([f"{path}: not UTF-8 text"]) from exc
        base = path.resolve().parent
    problems = [f"{k}: unknown table" for k in sorted(set(data) - set(_KNOWN))]
    tables = {name: _table(data, name, problems) for name in _KNOWN}
    for dotted, value in (overrides or {}).items():
        if value is not None:
            section, key = dotted.split(".")
            tables[section] = {**tables[section], key: value}
    url = _str(tables["broker"], "broker", "url", problems)
    broker = None if url is None else parse_broker(url, base, tables["broker"], problems)

    def rel(section: str, key: str) -> Path | None:
        text = _str(tables[section], section, key, problems)
        return None if text is None else base / text

    cfg = CloudConfig(
        path=path,
        broker=broker,
        registry=rel("registry", "path"),
        operator_key=rel("operator", "key_file"),
        database_url=_str(tables["database"], "database", "url", problems),
        state_dir=rel("state", "dir") or base,
        ingest=parse_ingest(tables["ingest"], problems),
    )
    if problems:
        raise ConfigError(problems)
    return cfg
