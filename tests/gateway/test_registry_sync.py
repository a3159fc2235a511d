"""REGISTRY_UPDATE (gateway/protocol/registry_update.py) and the gateway's RegistrySync:
signature, version order, scope, strict decoding, atomic writes into the state
directory (the configured registry directory is never written, and may be read-only as
the systemd unit mounts it), read by the real Registry with the merge rule of
gateway/registry.py. (Over a real broker with two gateways:
tests/cloud/test_registry_e2e.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest
from gwsupport import Node, make_node

from citysense_formats import registry_entry
from gateway.metrics import Metrics
from gateway.protocol import MalformedError, SignatureError, sign1
from gateway.protocol.registry_update import (
    ALL_GATEWAYS,
    MAX_BYTES,
    RegistryUpdate,
    decode_update,
    sign_update,
    topic_for,
)
from gateway.registry import Registry
from gateway.registry_sync import STATE_FILE, RegistrySync

OPERATOR = bytes(range(100, 132))
OTHER = bytes(range(1, 33))


def pub(seed: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()


def entry(node: Node, status: str = "active") -> bytes:
    obj = {"device_id": node.device_id, "public_key": node.public_key.hex(), "status": status}
    return registry_entry.encode(obj)


def update(
    version: int, nodes: list[tuple[Node, str]], scope: str = ALL_GATEWAYS
) -> RegistryUpdate:
    return RegistryUpdate(version, scope, {n.device_id: entry(n, s) for n, s in nodes}, 1)


def test_round_trip_and_topics() -> None:
    a, b = make_node("node-a"), make_node("node-b")
    u = update(7, [(a, "active"), (b, "revoked")])
    assert decode_update(pub(OPERATOR), sign_update(OPERATOR, u)) == u
    assert topic_for(ALL_GATEWAYS) == "citysense/v1/registry"
    assert topic_for("gw-1") == "citysense/v1/gw-1/registry"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({1: 1, 2: "*", 3: [b"{}"], 4: 0}, "bad-entry"),
        ({1: 1, 2: "a/b", 3: [], 4: 0}, "malformed"),
        ({1: -1, 2: "*", 3: [], 4: 0}, "malformed"),
        ({1: 1, 2: "*", 3: "x", 4: 0}, "malformed"),
        ({1: 1, 2: "*", 3: ["text"], 4: 0}, "malformed"),
    ],
)
def test_strict_decoding(payload: dict[int, object], reason: str) -> None:
    data = sign1(OPERATOR, b"operator", cbor2.dumps(payload))
    with pytest.raises(MalformedError) as exc:
        decode_update(pub(OPERATOR), data)
    assert exc.value.reason == reason


def test_duplicate_device_oversize_kid_forged() -> None:
    a = make_node("node-a")
    dup = cbor2.dumps({1: 1, 2: "*", 3: [entry(a), entry(a, "revoked")], 4: 0})
    with pytest.raises(MalformedError, match="given twice"):
        decode_update(pub(OPERATOR), sign1(OPERATOR, b"operator", dup))
    with pytest.raises(MalformedError) as big:
        decode_update(pub(OPERATOR), b"\x00" * (MAX_BYTES + 1))
    assert big.value.reason == "oversize"
    with pytest.raises(MalformedError) as kid:
        decode_update(pub(OPERATOR), sign_update(OPERATOR, update(1, [(a, "active")]), b"node-a"))
    assert kid.value.reason == "kid"
    with pytest.raises(SignatureError):
        decode_update(pub(OPERATOR), sign_update(OTHER, update(1, [(a, "active")])))


def make_sync(tmp_path: Path, gw: str = "gw-1") -> tuple[RegistrySync, Metrics]:
    metrics = Metrics()
    (tmp_path / "state").mkdir(exist_ok=True)
    sync = RegistrySync(gw, tmp_path / "registry", tmp_path / "state", metrics, pub(OPERATOR))
    return sync, metrics


def receive(sync: RegistrySync, data: object) -> str:
    return asyncio.run(sync.receive(data))


def test_versions_only_grow_and_refusals_are_counted(tmp_path: Path) -> None:
    a, b = make_node("node-a"), make_node("node-b")
    sync, metrics = make_sync(tmp_path)
    assert (
        receive(sync, sign_update(OPERATOR, update(5, [(a, "active"), (b, "active")]))) == "applied"
    )
    assert (
        receive(sync, sign_update(OPERATOR, update(5, [(a, "active"), (b, "active")]))) == "current"
    )
    assert receive(sync, sign_update(OPERATOR, update(4, [(a, "revoked")]))) == "stale"
    assert receive(sync, sign_update(OTHER, update(9, [(a, "revoked")]))) == "bad-signature"
    other_gw = update(9, [(a, "revoked")], scope="gw-2")
    assert receive(sync, sign_update(OPERATOR, other_gw)) == "wrong-gateway"
    assert receive(sync, b"\xd2garbage") == "malformed"
    assert receive(sync, "not bytes") == "malformed"
    assert dict(metrics.registry_updates) == {
        "applied": 1,
        "current": 1,
        "stale": 1,
        "bad-signature": 1,
        "wrong-gateway": 1,
        "malformed": 2,
    }
    reg = Registry(tmp_path / "registry", tmp_path / "state")
    reg.refresh()
    assert {d: reg.get(d).active for d in ("node-a", "node-b")} == {  # type: ignore[union-attr]
        "node-a": True,
        "node-b": True,
    }
    assert sync.version == 5
    # the held version survives a restart
    again, _ = make_sync(tmp_path)
    assert again.version == 5
    assert json.loads((tmp_path / "state" / STATE_FILE).read_text())["version"] == 5
    assert receive(again, sign_update(OPERATOR, update(4, [(a, "revoked")]))) == "stale"
    own = update(6, [(a, "revoked"), (b, "active")], scope="gw-1")
    assert receive(again, sign_update(OPERATOR, own)) == "applied"
    reg.refresh()
    assert reg.get("node-a").active is False  # type: ignore[union-attr]


def test_removes_only_files_an_update_wrote(tmp_path: Path) -> None:
    a, b, local = make_node("node-a"), make_node("node-b"), make_node("node-local")
    sync, _ = make_sync(tmp_path)
    (tmp_path / "registry").mkdir()
    (tmp_path / "registry" / "node-local.json").write_bytes(entry(local))
    assert (
        receive(sync, sign_update(OPERATOR, update(1, [(a, "active"), (b, "active")]))) == "applied"
    )
    assert receive(sync, sign_update(OPERATOR, update(2, [(a, "active")]))) == "applied"
    synced = tmp_path / "state" / "registry"
    assert sorted(p.name for p in synced.iterdir()) == ["node-a.json"]  # no temp file either
    assert (synced / "node-a.json").read_bytes() == entry(a)
    assert sorted(p.name for p in (tmp_path / "registry").iterdir()) == ["node-local.json"]
    reg = Registry(tmp_path / "registry", tmp_path / "state")
    reg.refresh()
    assert sorted(d for d in ("node-a", "node-b", "node-local") if reg.get(d)) == [
        "node-a",
        "node-local",
    ]


def test_unchanged_entries_are_not_rewritten(tmp_path: Path) -> None:
    a, b = make_node("node-a"), make_node("node-b")
    sync, _ = make_sync(tmp_path)
    receive(sync, sign_update(OPERATOR, update(1, [(a, "active"), (b, "active")])))
    synced = tmp_path / "state" / "registry"
    before = (synced / "node-a.json").stat().st_ino
    receive(sync, sign_update(OPERATOR, update(2, [(a, "active"), (b, "revoked")])))
    assert (synced / "node-a.json").stat().st_ino == before
    assert b'"revoked"' in (synced / "node-b.json").read_bytes()


def test_no_half_file_is_ever_seen(tmp_path: Path) -> None:
    """A reader parses every entry file in a loop while 20 updates of 100 entries (each
    entry padded to ~8 kB) are written: every read parses, none is ever missing."""
    nodes = [make_node(f"node-{i:03d}") for i in range(100)]
    sync, _ = make_sync(tmp_path)
    pad = "x" * 8000

    def big(version: int) -> bytes:
        status = "active" if version % 2 else "revoked"
        entries = {}
        for n in nodes:
            obj = {"device_id": n.device_id, "public_key": n.public_key.hex(), "status": status}
            entries[n.device_id] = registry_entry.encode({**obj, "note": f"{version}{pad}"})
        return sign_update(OPERATOR, RegistryUpdate(version, ALL_GATEWAYS, entries, 0))

    receive(sync, big(1))
    stop = threading.Event()
    reads, problems = [0], []

    def reader() -> None:
        while not stop.is_set():
            for n in nodes:
                try:
                    data = (tmp_path / "state" / "registry" / f"{n.device_id}.json").read_bytes()
                    registry_entry.parse(data, n.device_id)
                    reads[0] += 1
                except (OSError, ValueError) as exc:
                    problems.append(repr(exc))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for version in range(2, 22):
            assert sync.apply(big(version)) == "applied"
    finally:
        stop.set()
        t.join(30)
    assert problems == []
    assert reads[0] > 100
    leftovers = [p for p in os.listdir(tmp_path / "state" / "registry") if p.startswith(".")]
    assert leftovers == []


def test_without_operator_key_nothing_is_applied(tmp_path: Path) -> None:
    a = make_node("node-a")
    (tmp_path / "state").mkdir()
    sync = RegistrySync("gw-1", tmp_path / "registry", tmp_path / "state", Metrics(), None)
    assert sync.apply(sign_update(OPERATOR, update(1, [(a, "active")]))) == "no-operator-key"
    assert not (tmp_path / "registry").exists()
    assert not (tmp_path / "state" / "registry").exists()
    assert sync.apply(b"") == "empty"


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """`directory` bind-mounted read-only onto itself, as the unit's ReadOnlyPaths= does."""
    directory.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "--bind", str(directory), str(directory)], check=False)
    if done.returncode != 0:
        pytest.skip("needs mount (root): the read-only directory of the systemd unit")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(directory)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def test_applied_with_the_configured_directory_read_only(tmp_path: Path) -> None:
    """The shipped unit mounts /etc/citysense read-only: an update is applied all the same
    (into the state dir) and a revocation takes effect; before, `write-failed`."""
    a, b = make_node("node-a"), make_node("node-b")
    (tmp_path / "registry").mkdir()
    (tmp_path / "registry" / "node-a.json").write_bytes(entry(a))
    sync, metrics = make_sync(tmp_path)
    reg = Registry(tmp_path / "registry", tmp_path / "state")
    with read_only(tmp_path / "registry"):
        with pytest.raises(OSError, match="Read-only"):
            (tmp_path / "registry" / "probe").write_bytes(b"")
        v1 = update(1, [(a, "revoked"), (b, "active")])
        assert receive(sync, sign_update(OPERATOR, v1)) == "applied"
        reg.refresh()
        assert (reg.get("node-a").active, reg.get("node-b").active) == (False, True)  # type: ignore[union-attr]
    assert dict(metrics.registry_updates) == {"applied": 1}
    assert os.listdir(tmp_path / "registry") == ["node-a.json"]


def _write_local(path: Path, node: Node, status: str, mtime: float) -> None:
    path.write_bytes(entry(node, status))
    os.utime(path, (mtime, mtime))


def test_which_entry_counts_local_or_synced(tmp_path: Path) -> None:
    """gateway/registry.py's table, one device per row, around an update applied at T:
    a local file older than T loses to the synced entry; one changed after T wins (a
    revocation on site); a device no update ever named keeps its local file; a device an
    update named and the next one dropped is gone although its old local file is there."""
    older, synced_wins, edited, site_only, dropped = (
        make_node(f"node-{n}") for n in ("older", "synced", "edited", "site", "dropped")
    )
    local = tmp_path / "registry"
    local.mkdir()
    past = time.time() - 3600
    for n in (older, synced_wins, edited, site_only, dropped):
        _write_local(local / f"{n.device_id}.json", n, "active", past)
    sync, _ = make_sync(tmp_path)
    everyone = [(older, "revoked"), (synced_wins, "active"), (edited, "active")]
    v1 = update(1, [*everyone, (dropped, "active")])
    assert receive(sync, sign_update(OPERATOR, v1)) == "applied"
    assert receive(sync, sign_update(OPERATOR, update(2, everyone))) == "applied"
    time.sleep(0.05)  # file times tick in jiffies
    (local / "node-edited.json").write_bytes(entry(edited, "revoked"))  # edited on site now
    reg = Registry(local, tmp_path / "state")
    reg.refresh()
    got = {n.device_id: reg.get(n.device_id) for n in (older, synced_wins, edited, site_only)}
    assert {d: e.active if e else None for d, e in got.items()} == {
        "node-older": False,  # the operator's revocation beats the older local "active"
        "node-synced": True,
        "node-edited": False,  # revoked on site after the update was applied
        "node-site": True,  # enrolled on site only
    }
    assert reg.get("node-dropped") is None
    # the next update is newer than the site's edit: the operator's set counts again
    time.sleep(0.05)
    assert receive(sync, sign_update(OPERATOR, update(3, everyone))) == "applied"
    assert reg.refresh()
    assert reg.get("node-edited").active is True  # type: ignore[union-attr]


def test_state_from_before_the_synced_dir_keeps_the_files_it_wrote(tmp_path: Path) -> None:
    """A gateway upgraded from the sync that wrote into the configured directory: its
    state has no applied_at, so those files count until the next update is applied."""
    a = make_node("node-a")
    (tmp_path / "registry").mkdir()
    (tmp_path / "registry" / "node-a.json").write_bytes(entry(a, "revoked"))
    (tmp_path / "state").mkdir()
    old = {"version": 7, "files": ["node-a.json"]}
    (tmp_path / "state" / STATE_FILE).write_text(json.dumps(old))
    reg = Registry(tmp_path / "registry", tmp_path / "state")
    reg.refresh()
    assert reg.get("node-a").active is False  # type: ignore[union-attr]
    sync, _ = make_sync(tmp_path)
    assert sync.version == 7
    assert receive(sync, sign_update(OPERATOR, update(7, [(a, "active")]))) == "current"
    assert receive(sync, sign_update(OPERATOR, update(8, [(a, "active")]))) == "applied"
    reg.refresh()
    assert reg.get("node-a").active is True  # type: ignore[union-attr]
