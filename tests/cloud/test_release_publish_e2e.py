"""`citysense-cloud release build` -> `release publish` -> two real gateways' bundle caches,
through Mosquitto with the lab's ACL (citysense_lab.broker.acl_for) over mTLS.

- to one gateway: it verifies and caches the bundle (same bytes, 0600) and reports
  `accepted`; the tool exits 0;
- a bundle signed by another key, and one with a file's byte changed: refused with the
  reason (bad-signature, hash-mismatch), the tool exits 3, the cache keeps what it had;
- to all gateways, retained: a gateway started afterwards gets it when it connects;
- a file that is no bundle is refused by the tool before anything is published (exit 2);
- the ACL: a gateway may not publish a bundle (PUBACK 0x87).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support import REPO, free_port

sys.path[:0] = [str(REPO / "tests" / "gateway")]

from cloudsupport import raw_publish  # noqa: E402
from gwsupport import make_pki, scrape, start_gateway, stop, wait_log, write_config  # noqa: E402

from citysense_formats import bundle as fmt  # noqa: E402
from citysense_lab.broker import BrokerTLS, Mosquitto, acl_for, have_mosquitto  # noqa: E402
from provisioning import ca, keys  # noqa: E402

pytestmark = pytest.mark.skipif(not have_mosquitto(), reason="mosquitto not installed")
GWS = ("gw-a", "gw-b")


@dataclass
class Gw:
    name: str
    dir: Path
    config: Path
    metrics_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.dir / "gw.log"

    @property
    def cache(self) -> Path:
        return self.dir / "state" / "ota"

    def start(self) -> None:
        self.proc = start_gateway(self.config, self.log)
        wait_log(self.log, "event=uplink-connected", timeout=60)


@dataclass
class Site:
    dir: Path
    pki: dict[str, Path]
    port: int
    gws: dict[str, Gw]
    release_key: Path

    def cloud(self, *argv: str, state: str = "cloud-state") -> subprocess.CompletedProcess[str]:
        toml = self.dir / "cloud.toml"
        toml.write_text(
            f"""[broker]
url = "mqtts://localhost:{self.port}"
ca_file = "{self.pki["ca"]}"
cert_file = "{self.pki["operator_cert"]}"
key_file = "{self.pki["operator_key"]}"
[state]
dir = "{self.dir / state}"
"""
        )
        return subprocess.run(
            [sys.executable, "-m", "cloud.cli", "--config", str(toml), *argv],
            cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    def build(
        self, out: Path, seq: int, key: Path | None = None, state: str = "cloud-state"
    ) -> bytes:
        res = self.cloud(
            "release", "build", "--version", "0.1.0", "--seq", str(seq), "--arch", "host",
            "--key", str(key or self.release_key), "--out", str(out), state=state,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        return out.read_bytes()

    def raw_publish(self, identity: str, topic: str, body: bytes) -> int:
        return raw_publish(self.port, self.pki, identity, topic, body)


def _gateway(d: Path, name: str, pki: dict[str, Path], port: int, release_pub: Path) -> Gw:
    gd = d / name
    gd.mkdir()
    metrics_port = free_port()
    cfg = write_config(
        gd / "gw.toml",
        id=f'"{name}"',
        url=f'"mqtts://localhost:{port}"',
        listen=f'"127.0.0.1:{metrics_port}"',
        extra_uplink=(
            f'ca_file = "{pki["ca"]}"\ncert_file = "{pki[f"{name}_cert"]}"\n'
            f'key_file = "{pki[f"{name}_key"]}"\n'
        ),
    )
    with cfg.open("a") as f:
        f.write(f'\n[ota]\nrelease_key = "{release_pub}"\ncache_max_bytes = "1MB"\n')
    return Gw(name, gd, cfg, metrics_port)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    d = tmp_path_factory.mktemp("release")
    pki = make_pki(d / "pki", GWS[0])
    for gw in GWS[1:]:
        ca.gateway_cert(gw, d / "pki" / gw, d / "pki" / "ca")
        pki[f"{gw}_cert"] = d / "pki" / gw / "gateway.crt"
        pki[f"{gw}_key"] = d / "pki" / gw / "gateway.key"
    (d / "broker").mkdir()
    tls = BrokerTLS(pki["ca"], pki["broker_cert"], pki["broker_key"])
    broker = Mosquitto(d / "broker", free_port(), tls, acl_for(list(GWS)))
    broker.start()
    release_key = d / "release.key"
    keys.init_release_key(release_key)
    gws = {n: _gateway(d, n, pki, broker.port, Path(f"{release_key}.pub")) for n in GWS}
    try:
        yield Site(d, pki, broker.port, gws, release_key)
    finally:
        for gw in gws.values():
            if gw.proc is not None:
                stop(gw.proc)
        broker.stop()


def _cached(gw: Gw) -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in sorted(gw.cache.glob("*.csb"))}


def _wait_cached(gw: Gw, bundle_id: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while bundle_id not in _cached(gw):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{gw.name} never cached {bundle_id[:16]}")
        time.sleep(0.1)


def test_publish_verify_cache_refuse_catch_up(site: Site) -> None:
    gw_a, gw_b = site.gws["gw-a"], site.gws["gw-b"]
    gw_a.start()
    good = site.build(site.dir / "good.csb", 1)
    gid = fmt.bundle_id(good)

    res = site.cloud("release", "publish", str(site.dir / "good.csb"), "--gateway", "gw-a",
                     "--json")  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert (out["bundle"], out["report"], out["topic"]) == (
        gid,
        "accepted",
        "citysense/v1/gw-a/ota",
    )
    assert _cached(gw_a) == {gid: good}
    assert stat.S_IMODE((gw_a.cache / f"{gid}.csb").stat().st_mode) == 0o600

    # signed by another key (another state dir: its own seq history)
    other = site.dir / "other.key"
    keys.init_release_key(other)
    forged = site.build(site.dir / "forged.csb", 2, key=other, state="other-state")
    res = site.cloud("release", "publish", str(site.dir / "forged.csb"), "--gateway", "gw-a")
    assert res.returncode == 3, res.stderr
    assert res.stderr.startswith("citysense-cloud: gateway gw-a refused bundle ")
    assert ": bad-signature: manifest not signed by the release key" in res.stderr
    assert fmt.bundle_id(forged) not in _cached(gw_a)

    # a file's byte changed after signing: the shape holds, the hash does not
    bad = bytearray(good)
    bad[-10] ^= 0xFF
    (site.dir / "bad.csb").write_bytes(bad)
    res = site.cloud("release", "publish", str(site.dir / "bad.csb"), "--gateway", "gw-a")
    assert res.returncode == 3 and ": hash-mismatch: file " in res.stderr, res.stderr
    assert _cached(gw_a) == {gid: good}

    # not a bundle at all: refused by the tool, nothing published
    (site.dir / "junk.csb").write_bytes(b"CSB1" + b"\x00" * 3)
    res = site.cloud("release", "publish", str(site.dir / "junk.csb"), "--gateway", "gw-a")
    assert res.returncode == 2
    assert "junk.csb is not a bundle (truncated:" in res.stderr

    # --all, retained: gw-a gets it now (cached again, reported), gw-b when it starts
    second = site.build(site.dir / "second.csb", 3, state="second-state")  # same VERSION
    sid = fmt.bundle_id(second)
    res = site.cloud("release", "publish", str(site.dir / "second.csb"), "--all")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"published bundle {sid[:16]} (version 0.1.0 seq 3,")
    assert "on citysense/v1/ota (retained)" in res.stdout
    _wait_cached(gw_a, sid)
    gw_b.start()
    _wait_cached(gw_b, sid)
    assert _cached(gw_b) == {sid: second}

    m = scrape(gw_a.metrics_port)
    assert m['citysense_ota_bundles_total{outcome="accepted"}'] == 2
    assert m['citysense_ota_bundles_total{outcome="bad-signature"}'] == 1
    assert m['citysense_ota_bundles_total{outcome="hash-mismatch"}'] == 1

    # the largest kind of bundle through Mosquitto's default limits and the gateway's
    # client: ~870 KB (the format allows 1 MiB of files); the cache (1 MB) evicts the oldest
    key = serialization.load_pem_private_key(site.release_key.read_bytes(), None)
    assert isinstance(key, Ed25519PrivateKey)
    files = [(f"big/blob{i}.bin", os.urandom(58_000)) for i in range(15)]
    big = fmt.build(files, version="9.9.9", seq=9, hardware="esp32", protocol=2, arch="x64",
                    signing_key=key, created_ms=int(time.time() * 1000))  # fmt: skip
    (site.dir / "big.csb").write_bytes(big)
    res = site.cloud("release", "publish", str(site.dir / "big.csb"), "--gateway", "gw-a")
    assert res.returncode == 0, res.stderr
    got = {k[:8]: len(v) for k, v in _cached(gw_a).items()}
    assert _cached(gw_a) == {sid: second, fmt.bundle_id(big): big}, (got, gid[:8], sid[:8])
    assert sum(len(b) for b in _cached(gw_a).values()) <= 1_000_000

    # an empty message (how a retained bundle is cleared) is ignored, not refused
    assert site.raw_publish("operator", "citysense/v1/gw-a/ota", b"") == 0
    time.sleep(1)
    m2 = scrape(gw_a.metrics_port)
    ota = {k: v for k, v in m2.items() if k.startswith("citysense_ota_bundles_total")}
    assert ota == {
        'citysense_ota_bundles_total{outcome="accepted"}': 3,
        'citysense_ota_bundles_total{outcome="bad-signature"}': 1,
        'citysense_ota_bundles_total{outcome="hash-mismatch"}': 1,
    }

    # only the operator may publish bundles
    assert site.raw_publish("gw-a", "citysense/v1/ota", good) == 0x87
    assert site.raw_publish("gw-a", "citysense/v1/gw-b/ota", good) == 0x87
