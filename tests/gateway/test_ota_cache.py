"""gateway.ota.cache.BundleCache and the [ota] config section."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from gwsupport import write_config
from support import REPO

from citysense_formats import bundle
from gateway.config import DEFAULT_OTA_CACHE, ConfigError, load_config
from gateway.ota.cache import BundleCache

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def make(seq: int, size: int = 1000, key: Ed25519PrivateKey = KEY) -> bytes:
    files = [("citysense/app.py", bytes([seq % 256]) * size)]
    return bundle.build(
        files,
        version=f"1.{seq}",
        seq=seq,
        hardware="esp32",
        protocol=2,
        arch="x64",
        signing_key=key,
        created_ms=0,
    )


def test_put_verifies_and_stores_0600(tmp_path: Path) -> None:
    cache = BundleCache(tmp_path / "ota", 100_000, KEY.public_key())
    data = make(1)
    b = cache.put(data)
    path = cache.path(b.id)
    assert path == tmp_path / "ota" / f"{b.id}.csb"
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [e.id for e in cache.entries()] == [b.id]
    assert cache.load(b.id) == b
    assert cache.path("0" * 64) is None and cache.path("../etc") is None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (make(1, key=Ed25519PrivateKey.from_private_bytes(bytes(32))), "bad-signature"),
        (make(1)[:-1], "truncated"),
        (make(1)[:-1] + b"\xff", "hash-mismatch"),
        (b"not a bundle", "bad-magic"),
    ],
)
def test_refused_bundle_leaves_cache_unchanged(tmp_path: Path, data: bytes, reason: str) -> None:
    cache = BundleCache(tmp_path / "ota", 100_000, KEY.public_key().public_bytes_raw())
    kept = cache.put(make(2))
    with pytest.raises(bundle.BundleError) as info:
        cache.put(data)
    assert info.value.reason == reason
    assert sorted(os.listdir(tmp_path / "ota")) == [f"{kept.id}.csb"]


def test_evicts_oldest_to_stay_within_bound(tmp_path: Path) -> None:
    one = len(make(1))
    cache = BundleCache(tmp_path / "ota", 2 * one + 10, KEY.public_key())
    ids = []
    for seq in (1, 2, 3):
        ids.append(cache.put(make(seq)).id)
        os.utime(cache.path(ids[-1]), (seq, seq))  # type: ignore[arg-type]
    assert [e.id for e in cache.entries()] == ids[1:]
    cache.put(make(2))  # putting again refreshes: 3 is now the oldest
    cache.put(make(4))
    assert {e.id for e in cache.entries()} == {ids[1], bundle.bundle_id(make(4))}
    assert sum(e.size for e in cache.entries()) <= cache.max_bytes
    with pytest.raises(bundle.BundleError) as info:
        cache.put(make(5, size=3 * one))
    assert info.value.reason == "too-large"


def test_leftover_temporary_removed_on_open(tmp_path: Path) -> None:
    (tmp_path / "ota").mkdir()
    (tmp_path / "ota" / ("a" * 64 + ".csb.tmp")).write_bytes(b"half")
    BundleCache(tmp_path / "ota", 100_000, KEY.public_key())
    assert os.listdir(tmp_path / "ota") == []


def test_load_removes_a_damaged_file(tmp_path: Path) -> None:
    cache = BundleCache(tmp_path / "ota", 100_000, KEY.public_key())
    b = cache.put(make(1))
    path = cache.path(b.id)
    assert path is not None
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    assert cache.load(b.id) is None and cache.path(b.id) is None


def _with_ota(path: Path, body: str) -> Path:
    path.write_text(path.read_text() + "\n[ota]\n" + body + "\n")
    return path


def test_ota_config_defaults_and_values(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path / "gw.toml"))
    assert cfg.ota.release_key is None and cfg.ota.cache_max_bytes == DEFAULT_OTA_CACHE
    assert cfg.ota_cache_dir == tmp_path / "state" / "ota"
    pub = tmp_path / "release.pub"
    pub.write_text(KEY.public_key().public_bytes_raw().hex() + "\n")
    path = _with_ota(
        write_config(tmp_path / "gw.toml"),
        f'release_key = "{pub}"\ncache_dir = "{tmp_path / "c"}"\ncache_max_bytes = "1MiB"',
    )
    cfg = load_config(path)
    assert cfg.ota.release_key == KEY.public_key().public_bytes_raw()
    assert cfg.ota_cache_dir == tmp_path / "c" and cfg.ota.cache_max_bytes == 1024**2
    run = [sys.executable, "-m", "gateway.cli", "check-config", "--config", str(path)]
    ok = subprocess.run(run, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[1] == (
        f"OK: ota release key {pub}, cache {tmp_path / 'c'} (max 1048576 bytes)"
    )


def test_ota_config_problems(tmp_path: Path) -> None:
    pub = tmp_path / "release.pub"
    pub.write_text("nope\n")
    path = _with_ota(
        write_config(tmp_path / "gw.toml"),
        f'release_key = "{pub}"\ncache_max_bytes = "1kB"\ncolour = 1',
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [
        "ota.colour: unknown key",
        f"ota.release_key: {pub} is not 64 hex chars (the .pub file) or an Ed25519 PEM public"
        " key (give the release .pub)",
        "ota.cache_max_bytes: at least 65536 bytes (one bundle), got 1000",
    ]


def _push(cfg: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    run = [sys.executable, "-m", "gateway.cli", "ota", "push", *argv, "--config", str(cfg)]
    return subprocess.run(run, cwd=REPO, capture_output=True, text=True, timeout=60)


def test_ota_push_offline_and_its_one_line_errors(tmp_path: Path) -> None:
    """With the service stopped `ota push` caches the bundle and writes the offer for
    the service to send; every refusal is one line, exit 1, nothing cached."""
    bare = write_config(tmp_path / "bare.toml")
    res = _push(bare, str(tmp_path / "x.csb"), "--device", "n1")
    assert (res.returncode, res.stdout) == (1, "")
    assert res.stderr == (
        f"citysense-gateway: {bare}: [ota] release_key is not set, so bundles cannot be"
        " checked: set it to the release public key (.pub)\n"
    )
    pub = tmp_path / "release.pub"
    pub.write_text(KEY.public_key().public_bytes_raw().hex() + "\n")
    cfg = _with_ota(write_config(tmp_path / "gw.toml"), f'release_key = "{pub}"')
    missing = tmp_path / "missing.csb"
    res = _push(cfg, str(missing), "--device", "n1")
    want = f"citysense-gateway: {missing}: cannot read: No such file or directory\n"
    assert (res.returncode, res.stderr) == (1, want)
    forged = tmp_path / "forged.csb"
    forged.write_bytes(make(3, key=Ed25519PrivateKey.from_private_bytes(bytes(32))))
    res = _push(cfg, str(forged), "--device", "n1")
    assert res.returncode == 1 and res.stderr.count("\n") == 1
    assert res.stderr.startswith(f"citysense-gateway: {forged}: refused (bad-signature): ")
    assert not (tmp_path / "state" / "ota").exists() or not list(
        (tmp_path / "state" / "ota").glob("*.csb")
    )
    good = tmp_path / "good.csb"
    good.write_bytes(make(3))
    res = _push(cfg, str(good), "--device", "n1")
    bid = bundle.bundle_id(good.read_bytes())
    assert res.returncode == 0, res.stderr
    assert res.stdout == (
        f"ota push n1: bundle {bid[:16]} version 1.3 seq 3 ({len(good.read_bytes())} bytes)"
        " cached and offered via the offers file (service stopped): offered when it runs"
        " and the device says HELLO\n"
    )
    offers = json.loads((tmp_path / "state" / "ota" / "offers.json").read_text())
    assert offers == {"n1": {"bundle": bid, "version": "1.3", "size": len(good.read_bytes())}}
