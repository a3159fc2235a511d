"""`citysense-cloud ingest` against a real Mosquitto and a real PostgreSQL (and SQLite).

Records are real signed records (gwsupport.Node) published the way a gateway publishes
them. After each fault the database holds every record exactly once, no forged one, and
the ledger balances: deliveries = records + duplicates + refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cloudsupport import (
    Postgres,
    Publisher,
    cloud_config,
    pg_bin,
    run_cli,
    start_ingest,
    start_ingest_args,
    wait_until,
)
from gwsupport import (
    Mosquitto,
    Node,
    make_node,
    make_pki,
    mosquitto,
    stop,
    wait_log,
    write_entry,
)

from cloud.store import Store, open_store

needs_pg = pytest.mark.skipif(pg_bin() is None, reason="PostgreSQL not installed")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with mosquitto(tmp_path / "broker") as m:
        yield m


@pytest.fixture
def pg() -> Iterator[Postgres]:
    if pg_bin() is None:
        pytest.skip("PostgreSQL not installed (scripts/setup.sh dev)")
    server = Postgres()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


class Ingests:
    """Ingest processes by instance name; every one is killed at the end."""

    def __init__(self, config: Path, logs: Path) -> None:
        self.config = config
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def log(self, name: str) -> Path:
        return self.logs / f"ingest-{name}.log"

    def start(self, name: str) -> None:
        log = self.log(name)
        count = log.read_text().count("event=ingest-subscribed") if log.exists() else 0
        self.procs[name] = start_ingest(self.config, name, self.log(name))
        wait_log(self.log(name), "event=ingest-subscribed", timeout=30, count=count + 1)

    def kill9(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop_all(self) -> dict[str, int]:
        codes = {name: stop(p) for name, p in self.procs.items()}
        self.procs.clear()
        return codes


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Path, list[Node]]]:
    registry = tmp_path / "registry"
    registry.mkdir()
    nodes = [make_node(f"dev-{i}") for i in range(3)]
    for n in nodes:
        write_entry(registry, n)
    yield registry, nodes


@contextlib.contextmanager
def _ingests(tmp_path: Path, broker: Mosquitto, registry: Path, db: str) -> Iterator[Ingests]:
    cfg = cloud_config(tmp_path / "cloud.toml", broker.port, registry, db)
    ing = Ingests(cfg, tmp_path)
    try:
        yield ing
    finally:
        for p in ing.procs.values():
            p.kill()
            p.wait(10)


def count(store: Store, sql: str = "SELECT COUNT(*) FROM records") -> int:
    return int(store.query(sql)[0][0])


def balance(store: Store) -> int:
    """records + duplicates + refused, as the ledger counts them."""
    (rec, dup), rej = (
        store.query("SELECT SUM(records), SUM(duplicates) FROM ledger")[0],
        count(store, "SELECT COALESCE(SUM(n), 0) FROM rejections"),
    )
    return int(rec or 0) + int(dup or 0) + rej


def test_duplicates_and_forgeries_sqlite_report_exact(
    tmp_path: Path, broker: Mosquitto, fleet: tuple[Path, list[Node]]
) -> None:
    registry, (a, b, revoked) = fleet
    write_entry(registry, revoked, status="revoked")
    db = f"sqlite:///{tmp_path}/cloud.sqlite3"
    with _ingests(tmp_path, broker, registry, db) as ing:
        ing.start("one")
        pub = Publisher(broker.port)
        for seq in [*range(1, 7), *range(8, 21)]:  # seq 7 never sent: a gap
            pub.publish("gw-1", a.device_id, a.record(seq))
        for seq in range(1, 6):  # each sent again: a gateway kill -9 makes these
            pub.publish("gw-1", a.device_id, a.record(seq))
        for seq in range(1, 4):
            pub.publish("gw-2", b.device_id, b.record(seq))
        pub.publish("gw-1", a.device_id, Node(a.device_id, os.urandom(32)).record(100))
        pub.publish("gw-1", revoked.device_id, revoked.record(1))
        pub.publish("gw-1", "dev-unknown", make_node("dev-unknown").record(1))
        pub.publish("gw-2", b.device_id, b"\xd2\x84not cose")
        pub.flush()
        pub.close()
        deliveries = 19 + 5 + 3 + 4
        store = open_store(db)
        wait_until(lambda: balance(store) == deliveries, 30, "every delivery accounted")
        assert ing.stop_all() == {"one": 0}
        assert store.query("SELECT seq FROM records WHERE device_id = 'dev-0' AND seq > 20") == []
        quarantined = store.query("SELECT reason, device_id, gateway_id FROM quarantine")
        store.close()
    assert sorted(quarantined) == [
        ("bad-signature", "dev-0", "gw-1"),
        ("malformed", "dev-1", "gw-2"),
        ("revoked", "dev-2", "gw-1"),
        ("unknown-device", "dev-unknown", "gw-1"),
    ]
    res = run_cli("--database", db, "report", "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    seen = {d: e.pop("last_seen") for d, e in report["devices"].items()}
    assert [type(seen[d]) for d in ("dev-0", "dev-1")] == [int, int]
    assert (seen["dev-2"], seen["dev-unknown"]) == (None, None)  # refusals are not sightings
    assert report == {
        "devices": {
            "dev-0": {
                "records": 19,
                "duplicates": 5,
                "gaps": [[7, 7]],
                "ranges": [[1, 6], [8, 20]],
                "rejected": {"bad-signature": 1},
            },
            "dev-1": {
                "records": 3,
                "duplicates": 0,
                "gaps": [],
                "ranges": [[1, 3]],
                "rejected": {"malformed": 1},
            },
            "dev-2": {
                "records": 0,
                "duplicates": 0,
                "gaps": [],
                "ranges": [],
                "rejected": {"revoked": 1},
            },
            "dev-unknown": {
                "records": 0,
                "duplicates": 0,
                "gaps": [],
                "ranges": [],
                "rejected": {"unknown-device": 1},
            },
        },
        "rejected": {"bad-signature": 1, "malformed": 1, "revoked": 1, "unknown-device": 1},
    }
    text = run_cli("--database", db, "report", "--device", "dev-0")
    assert text.returncode == 0
    assert text.stdout.splitlines()[1].split()[:4] == ["dev-0", "19", "5", "1"]
    assert text.stdout.splitlines()[1].endswith("  7")


def _publish_all(pub: Publisher, nodes: list[Node], seqs: range) -> None:
    for seq in seqs:
        for n in nodes:
            pub.publish("gw-1", n.device_id, n.record(seq))


def _assert_exactly_once(store: Store, nodes: list[Node], n: int) -> None:
    got = store.query("SELECT device_id, COUNT(*), MIN(seq), MAX(seq) FROM records GROUP BY 1")
    assert sorted(got) == [(node.device_id, n, 1, n) for node in nodes]
    assert count(store, "SELECT COUNT(*) FROM readings") == n * len(nodes)
    assert count(store, "SELECT SUM(records) FROM ledger") == n * len(nodes)


@needs_pg
def test_kill9_one_of_two_instances_then_restart_under_its_name(
    tmp_path: Path, broker: Mosquitto, pg: Postgres, fleet: tuple[Path, list[Node]]
) -> None:
    registry, nodes = fleet
    n = 600
    with _ingests(tmp_path, broker, registry, pg.url) as ing:
        ing.start("a")
        ing.start("b")
        store = open_store(pg.url)
        pub = Publisher(broker.port)
        _publish_all(pub, nodes, range(1, n // 3 + 1))
        pub.publish("gw-1", nodes[0].device_id, Node(nodes[0].device_id, os.urandom(32)).record(1))
        wait_until(lambda: count(store) > 0, 30, "first records stored")
        ing.kill9("a")  # mid-stream: whatever it had not PUBACKed waits for its session
        _publish_all(pub, nodes, range(n // 3 + 1, n + 1))
        pub.flush()
        before = -1
        while (now := count(store)) != before:  # until the survivor has taken all it gets
            before = now
            time.sleep(1.0)
        # Mosquitto hands a dead shared subscriber's messages to nobody else: they wait
        # for its session (DESIGN.md facts); ~700 of 1800 here
        assert before < n * len(nodes)
        ing.start("a")
        wait_until(lambda: count(store) == n * len(nodes), 120, "every record stored")
        wait_until(lambda: balance(store) >= n * len(nodes) + 1, 30, "forgery counted")
        assert ing.stop_all() == {"b": 0, "a": 0}
        _assert_exactly_once(store, nodes, n)
        assert store.query("SELECT reason, n FROM rejections") == [("bad-signature", 1)]
        by_instance = dict(store.query("SELECT instance, COUNT(*) FROM records GROUP BY 1"))
        store.close()
    assert set(by_instance) == {"a", "b"}  # both shared the stream


@needs_pg
def test_postgres_stopped_mid_stream_nothing_lost(
    tmp_path: Path, broker: Mosquitto, pg: Postgres, fleet: tuple[Path, list[Node]]
) -> None:
    registry, nodes = fleet
    n = 300
    with _ingests(tmp_path, broker, registry, pg.url) as ing:
        ing.start("solo")
        store = open_store(pg.url)
        pub = Publisher(broker.port)
        _publish_all(pub, nodes, range(1, n // 2 + 1))
        wait_until(lambda: count(store) > 0, 30, "first records stored")
        store.close()
        pg.stop("immediate")  # a crash of the database server
        _publish_all(pub, nodes, range(n // 2 + 1, n + 1))
        pub.flush()
        wait_log(ing.log("solo"), "event=db-unavailable", timeout=30)
        pg.start()
        store = open_store(pg.url)
        wait_until(lambda: count(store) == n * len(nodes), 120, "every record stored")
        assert ing.stop_all() == {"solo": 0}
        _assert_exactly_once(store, nodes, n)
        report = json.loads(run_cli("--database", pg.url, "report", "--json").stdout)
        store.close()
    assert {d: (e["records"], e["gaps"]) for d, e in report["devices"].items()} == {
        node.device_id: (n, []) for node in nodes
    }


@needs_pg
def test_retire_drains_the_session_then_the_survivor_gets_everything(
    tmp_path: Path, broker: Mosquitto, pg: Postgres, fleet: tuple[Path, list[Node]]
) -> None:
    registry, nodes = fleet
    n = 200
    with _ingests(tmp_path, broker, registry, pg.url) as ing:
        ing.start("a")
        ing.start("b")
        store = open_store(pg.url)
        pub = Publisher(broker.port)
        ing.kill9("a")
        _publish_all(pub, nodes, range(1, n + 1))  # a's share waits in its session
        pub.flush()
        retire = subprocess.run(
            [*start_ingest_args(ing.config, "a"), "--retire"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert retire.returncode == 0, retire.stderr[-2000:]
        assert "event=ingest-retired instance=a" in retire.stderr
        wait_until(lambda: count(store) == n * len(nodes), 60, "a's share drained")
        _publish_all(pub, nodes, range(n + 1, 2 * n + 1))  # a is gone: all of it to b
        pub.flush()
        wait_until(lambda: count(store) == 2 * n * len(nodes), 60, "every record stored")
        assert ing.stop_all() == {"b": 0}
        _assert_exactly_once(store, nodes, 2 * n)
        store.close()


@needs_pg
def test_broker_restarted_mid_stream_session_resumes_exactly_once(
    tmp_path: Path, pg: Postgres, fleet: tuple[Path, list[Node]]
) -> None:
    registry, nodes = fleet
    n = 600
    with (
        mosquitto(tmp_path / "broker", persistence=True) as broker,
        _ingests(tmp_path, broker, registry, pg.url) as ing,
    ):
        ing.start("solo")
        store = open_store(pg.url)
        pub = Publisher(broker.port)
        _publish_all(pub, nodes, range(1, n // 2 + 1))
        pub.flush()
        pub.close()
        wait_until(lambda: count(store) > 0, 30, "first records stored")
        broker.stop()  # clean stop: Mosquitto saves its sessions and their queues
        broker.start()
        wait_log(ing.log("solo"), "event=ingest-subscribed", timeout=60, count=2)
        pub = Publisher(broker.port)
        _publish_all(pub, nodes, range(n // 2 + 1, n + 1))
        pub.flush()
        pub.close()
        wait_until(lambda: count(store) == n * len(nodes), 120, "every record stored")
        assert "session_present=True" in ing.log("solo").read_text()
        assert ing.stop_all() == {"solo": 0}
        _assert_exactly_once(store, nodes, n)
        store.close()


def _tls_publish(port: int, pki: dict[str, Path], node: Node, seqs: range) -> None:
    """Publish as gateway gw-1 over mTLS (the broker's ACL lets CN gw-1 write its topics)."""
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gw-1", protocol=mqtt.MQTTv5)
    c.tls_set(str(pki["ca"]), str(pki["gw-1_cert"]), str(pki["gw-1_key"]))
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        for seq in seqs:
            info = c.publish(f"citysense/v1/gw-1/{node.device_id}/records", node.record(seq), 1)
            info.wait_for_publish(15)
            assert info.is_published()
    finally:
        c.disconnect()
        c.loop_stop()


def test_mutual_tls_and_a_wrong_ca(tmp_path: Path, fleet: tuple[Path, list[Node]]) -> None:
    """The ingest's own MQTT client over mTLS (CN consumer); with a CA that did not sign
    the broker's certificate it keeps retrying, stores nothing and stops cleanly."""
    registry, (a, *_) = fleet
    pki = make_pki(tmp_path / "pki", "gw-1")
    other = make_pki(tmp_path / "other", "gw-x")
    db = f"sqlite:///{tmp_path}/cloud.sqlite3"
    with mosquitto(tmp_path / "broker", tls=pki) as broker:
        for name, ca_file in (("good", pki["ca"]), ("wrong-ca", other["ca"])):
            cfg = tmp_path / f"{name}.toml"
            cfg.write_text(
                f'[broker]\nurl = "mqtts://127.0.0.1:{broker.port}"\nca_file = "{ca_file}"\n'
                f'cert_file = "{pki["consumer_cert"]}"\nkey_file = "{pki["consumer_key"]}"\n'
                f'[registry]\npath = "{registry}"\n[database]\nurl = "{db}"\n'
            )
        ing = Ingests(tmp_path / "good.toml", tmp_path)
        try:
            ing.start("tls")
            _tls_publish(broker.port, pki, a, range(1, 51))
            store = open_store(db)
            wait_until(lambda: count(store) == 50, 30, "50 records over mTLS")
            assert ing.stop_all() == {"tls": 0}
            wrong = start_ingest(tmp_path / "wrong-ca.toml", "wrong", tmp_path / "wrong.log")
            try:
                wait_log(tmp_path / "wrong.log", "event=broker-unreachable", timeout=30, count=2)
            finally:
                assert stop(wrong) == 0
            assert "CERTIFICATE_VERIFY_FAILED" in (tmp_path / "wrong.log").read_text()
            assert count(store) == 50
            store.close()
        finally:
            for p in ing.procs.values():
                p.kill()
                p.wait(10)


NO_MATCHING_SUBSCRIBERS = 0x10


def _publish_kept_until_matched(
    port: int, items: list[tuple[Node, int]], timeout: float = 60
) -> int:
    """Publish like a gateway that keeps a record whose PUBACK says 0x10 No matching
    subscribers (Mosquitto 2.0.11 answers so while a restarted broker has not got the
    ingest's shared subscription back) and sends it again; returns how many were sent
    again."""
    import paho.mqtt.client as mqtt

    codes: dict[int, int] = {}
    done = threading.Condition()

    def on_publish(_c: object, _u: object, mid: int, rc: object, _p: object) -> None:
        with done:
            codes[mid] = int(getattr(rc, "value", rc))  # type: ignore[call-overload]
            done.notify_all()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gw-like", protocol=mqtt.MQTTv5)
    c.on_publish = on_publish
    c.max_inflight_messages_set(100)
    c.connect("127.0.0.1", port)
    c.loop_start()
    again, left = 0, list(items)
    deadline = time.monotonic() + timeout
    try:
        while left:
            assert time.monotonic() < deadline, f"{len(left)} never reached a subscriber"
            sent: dict[int, tuple[Node, int]] = {}
            for node, seq in left:
                topic = f"citysense/v1/gw-1/{node.device_id}/records"
                sent[c.publish(topic, node.record(seq), qos=1).mid] = (node, seq)
            with done:
                done.wait_for(lambda s=sent: all(m in codes for m in s), timeout=30)  # type: ignore[misc]
            left = [item for m, item in sent.items() if codes.get(m) != 0]
            other = {codes.get(m) for m in sent} - {0, NO_MATCHING_SUBSCRIBERS}
            assert other == set(), f"PUBACK codes {other}"
            again += len(left)
            time.sleep(0.05)
    finally:
        c.disconnect()
        c.loop_stop()
    return again


@needs_pg
def test_broker_restart_ingest_resubscribes_unprompted_publishers_at_once(
    tmp_path: Path, pg: Postgres, fleet: tuple[Path, list[Node]]
) -> None:
    """Mosquitto restarted (persistence on) with records queued for the ingest, and the
    publisher back the moment the broker is: nobody waits for the ingest. The session
    comes back (session_present=True) without its shared subscription; the ingest
    subscribes again on its own; what was published before that got PUBACK 0x10 and was
    sent again (as a gateway must: docs/cloud.md, Sessions); every record stored once."""
    registry, nodes = fleet
    n = 400
    with (
        mosquitto(tmp_path / "broker", persistence=True) as broker,
        _ingests(tmp_path, broker, registry, pg.url) as ing,
    ):
        ing.start("solo")
        store = open_store(pg.url)
        ing.kill9("solo")  # its share now waits in the session, to be saved by the broker
        first = [(node, seq) for seq in range(1, n // 2 + 1) for node in nodes]
        assert _publish_kept_until_matched(broker.port, first) == 0  # the session matches
        ing.start("solo")
        wait_until(lambda: count(store) > 0, 30, "first records stored")
        broker.stop()
        broker.start()
        rest = [(node, seq) for seq in range(n // 2 + 1, n + 1) for node in nodes]
        again = _publish_kept_until_matched(broker.port, rest)
        print(f"records sent again after PUBACK 0x10 while the ingest resubscribed: {again}")
        wait_until(lambda: count(store) == n * len(nodes), 120, "every record stored")
        log = ing.log("solo").read_text()
        assert log.count("event=ingest-subscribed") == 3  # twice started, once on its own
        assert "session_present=True" in log.split("event=broker-lost", 1)[-1]
        assert ing.stop_all() == {"solo": 0}
        _assert_exactly_once(store, nodes, n)
        store.close()


@needs_pg
def test_plain_subscription_survives_a_broker_restart_with_nothing_dropped(
    tmp_path: Path, pg: Postgres, fleet: tuple[Path, list[Node]]
) -> None:
    """`[ingest] subscription = "plain"` (one instance): Mosquitto restores the session's
    plain subscription across its restart, so a publisher back at once is never told
    0x10 and needs no wait for the ingest. Switching from shared leaves no second
    subscription (no record delivered twice)."""
    registry, nodes = fleet
    n = 400
    with (
        mosquitto(tmp_path / "broker", persistence=True) as broker,
        _ingests(tmp_path, broker, registry, pg.url) as ing,
    ):
        ing.start("solo")  # shared, the default
        assert ing.stop_all() == {"solo": 0}
        ing.config.write_text(ing.config.read_text() + 'subscription = "plain"\n')
        ing.start("solo")
        store = open_store(pg.url)
        first = [(node, seq) for seq in range(1, n // 2 + 1) for node in nodes]
        assert _publish_kept_until_matched(broker.port, first) == 0
        wait_until(lambda: count(store) == len(first), 60, "the first half stored")
        assert count(store, "SELECT SUM(duplicates) FROM ledger") == 0  # one subscription
        broker.stop()
        broker.start()
        rest = [(node, seq) for seq in range(n // 2 + 1, n + 1) for node in nodes]
        assert _publish_kept_until_matched(broker.port, rest) == 0  # none got 0x10
        wait_until(lambda: count(store) == n * len(nodes), 120, "every record stored")
        assert ing.log("solo").read_text().count("event=ingest-subscribed") == 3
        assert ing.stop_all() == {"solo": 0}
        _assert_exactly_once(store, nodes, n)
        store.close()
