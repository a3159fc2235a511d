"""`citysense-cloud registry publish`: the registry directory, signed, to the gateways.

Reads every `<device_id>.json` of [registry] path (each checked by citysense_formats.
registry_entry; one bad file stops the publish), signs the full set as a REGISTRY_UPDATE
(gateway/protocol/registry_update.py) with the operator key and publishes it QoS 1,
retained, on citysense/v1/registry (every gateway) or, with `--gateway GW`, on
citysense/v1/GW/registry; returns once the broker's PUBACK took it.

The version: max(last version + 1, Unix seconds now). The last one is kept in
`registry-version.json` under [state] dir, updated under a lock (fcntl.flock on
`registry-version.lock`) by temp file + fsync + rename BEFORE the publish, so a number
is never used twice; the clock part keeps versions growing from a new operator machine
or a lost state dir. `citysense-cloud registry version` prints the last one.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from citysense_formats import devid, registry_entry
from citysense_formats.durable import replace_file
from gateway.protocol import ProtocolError
from gateway.protocol.registry_update import (
    ALL_GATEWAYS,
    RegistryUpdate,
    decode_update,
    sign_update,
    topic_for,
)

from .command import load_operator_seed
from .command_mqtt import CommandLink
from .config import CloudConfig
from .errors import CloudError, UsageError
from .statelock import locked

VERSION_FILE = "registry-version.json"
WRITE_HINT = "citysense/v1/registry and citysense/v1/+/registry"


class VersionStoreError(CloudError):
    exit_code = 6


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("registry", help="distribute the device registry to the gateways")
    rsub = p.add_subparsers(dest="registry_cmd", required=True, metavar="ACTION")
    pub = rsub.add_parser("publish", help="sign the registry directory and publish it")
    pub.add_argument("--gateway", help="only this gateway (default: every gateway)")
    pub.add_argument(
        "--allow-empty", action="store_true", help="publish an empty registry (removes all)"
    )
    pub.add_argument("--json", action="store_true", help="print the outcome as JSON")
    pub.set_defaults(func=publish)
    ver = rsub.add_parser("version", help="print the last version published from here")
    ver.set_defaults(func=show_version)


# -- the version ---------------------------------------------------------------------
def last_version(state_dir: Path) -> int | None:
    path = state_dir / VERSION_FILE
    try:
        version = json.loads(path.read_bytes())["version"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise VersionStoreError(
            f"{path} is unreadable ({exc}): move it aside; versions then continue from the clock"
        ) from exc
    if type(version) is not int or version < 0:
        raise VersionStoreError(f"{path}: version is not an integer: move it aside")
    return version


def next_version(state_dir: Path, now: float | None = None) -> int:
    """A version above every earlier one from this state dir, persisted before it is used."""
    with locked(state_dir, "registry-version.lock", VersionStoreError):
        last = last_version(state_dir)
        clock = int(time.time() if now is None else now)
        version = clock if last is None else max(last + 1, clock)
        path = state_dir / VERSION_FILE
        try:
            replace_file(path, json.dumps({"version": version}).encode(), 0o600)
        except OSError as exc:
            raise VersionStoreError(f"cannot write {path} ({exc.strerror})") from exc
    return version


# -- the entries ---------------------------------------------------------------------
def read_entries(registry: Path) -> dict[str, bytes]:
    """device id -> file bytes of every entry; UsageError naming the first bad file."""
    out: dict[str, bytes] = {}
    for path in sorted(registry.glob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            with path.open("rb") as f:
                data = f.read(registry_entry.MAX_BYTES + 1)
            entry = registry_entry.parse(data, path.stem)
        except OSError as exc:
            raise UsageError(f"cannot read {path} ({exc.strerror}): nothing published") from exc
        except registry_entry.RegistryEntryError as exc:
            raise UsageError(f"{path}: {exc}: fix or remove it; nothing published") from exc
        out[entry.device_id] = data
    return out


def publish(args: argparse.Namespace, cfg: CloudConfig) -> int:
    scope = ALL_GATEWAYS
    if args.gateway is not None:
        try:
            scope = devid.check(args.gateway, "gateway id")
        except devid.DeviceIdError as exc:
            raise UsageError(str(exc)) from exc
    entries = read_entries(cfg.need_registry())
    if not entries and not args.allow_empty:
        raise UsageError(
            f"{cfg.registry} holds no entries: publishing it would remove every device from"
            " the gateways; pass --allow-empty if that is meant"
        )
    seed = load_operator_seed(cfg.need_operator_key())
    broker = cfg.need_broker()
    version = next_version(cfg.state_dir)
    update = RegistryUpdate(version, scope, entries, int(time.time() * 1000))
    try:
        body = sign_update(seed, update)
        public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
        decode_update(public, body)  # the gateways' decoder, before anything leaves
    except ProtocolError as exc:
        raise UsageError(f"cannot publish this registry: {exc}") from exc
    topic = topic_for(scope)
    with CommandLink(broker, None, write_hint=WRITE_HINT) as link:
        link.publish(topic, body, retain=True)
    out = {"version": version, "scope": scope, "entries": len(entries), "bytes": len(body)}
    if args.json:
        print(json.dumps({**out, "topic": topic}))
    else:
        print(
            f"published registry version {version} ({len(entries)} entries, {len(body)}"
            f" bytes) to {topic}, retained"
        )
    return 0


def show_version(args: argparse.Namespace, cfg: CloudConfig) -> int:
    version = last_version(cfg.state_dir)
    print("none" if version is None else version)
    return 0
