"""cloud/store.py on SQLite and a real PostgreSQL: each (device, seq) once, ledger, quarantine."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from cloudsupport import Postgres, pg_bin
from gwsupport import make_node

from cloud.ledger import export_rows, ledger
from cloud.records import Accepted, Delivery, check
from cloud.store import Refusal, Store, TransientError, open_store
from gateway.registry import Device

_db = itertools.count()


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    if pg_bin() is None:
        pytest.skip("PostgreSQL not installed (scripts/setup.sh dev)")
    server = Postgres()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        s = open_store(f"sqlite:///{tmp_path}/cloud.sqlite3")
    else:
        server: Postgres = request.getfixturevalue("pg")
        name = f"t{next(_db)}"
        with psycopg.connect(server.url, autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        s = open_store(server.url.rsplit("/", 1)[0] + "/" + name)
    yield s
    s.close()


NODE = make_node("dev-1")
KEYS = {NODE.device_id: Device(NODE.device_id, NODE.public_key, True)}


def rec(seq: int, gw_ms: int = 1_700_000_000_000) -> Accepted:
    d = Delivery("citysense/v1/gw-1/dev-1/records", NODE.record(seq), 1.0, gw_ms + seq)
    return check(d, KEYS)


def refusal(payload: bytes, reason: str = "bad-signature") -> Refusal:
    return Refusal("dev-1", reason, "detail", "gw-1", "citysense/v1/gw-1/dev-1/records", payload, 5)


def test_each_record_once_across_and_within_batches(store: Store) -> None:
    r1 = store.commit([rec(1), rec(2), rec(2), rec(4)], [], "a")
    r2 = store.commit([rec(4), rec(5), rec(1)], [], "b")
    assert (r1.stored, r1.duplicates, r2.stored, r2.duplicates) == (3, 1, 1, 2)
    rows = store.query("SELECT seq, instance, cose FROM records ORDER BY seq")
    assert [(s, i) for s, i, _ in rows] == [(1, "a"), (2, "a"), (4, "a"), (5, "b")]
    assert [bytes(c) for _, _, c in rows] == [NODE.record(s) for s in (1, 2, 4, 5)]
    assert store.query("SELECT seq, idx, name, unit, value FROM readings ORDER BY seq") == [
        (1, 0, "dev-1/temp", "Cel", 21.5),
        (2, 0, "dev-1/temp", "Cel", 21.5),
        (4, 0, "dev-1/temp", "Cel", 21.5),
        (5, 0, "dev-1/temp", "Cel", 21.5),
    ]
    report = ledger(store)
    assert report == {
        "devices": {
            "dev-1": {
                "records": 4,
                "duplicates": 3,
                "gaps": [[3, 3]],
                "ranges": [[1, 2], [4, 5]],
                "rejected": {},
                "last_seen": 1_700_000_000,
            }
        },
        "rejected": {},
    }


def test_refusals_counted_and_quarantined_once_per_payload(store: Store) -> None:
    store.commit([], [refusal(b"x"), refusal(b"x"), refusal(b"y", "malformed")], "a")
    store.commit([rec(1)], [refusal(b"x"), replace(refusal(b"z", "malformed"), device_id="")], "a")
    assert store.query("SELECT payload, reason, device_id, n FROM quarantine ORDER BY payload") == [
        (b"x", "bad-signature", "dev-1", 3),
        (b"y", "malformed", "dev-1", 1),
        (b"z", "malformed", "", 1),
    ]
    report = ledger(store)
    assert report["devices"]["dev-1"]["rejected"] == {"bad-signature": 3, "malformed": 1}
    assert report["devices"]["dev-1"]["records"] == 1
    assert report["rejected"] == {"bad-signature": 3, "malformed": 2}
    assert "" not in report["devices"]


def test_export_in_time_order_within_range(store: Store) -> None:
    store.commit([rec(3), rec(1), rec(2)], [], "a")
    rows = list(export_rows(store, "dev-1", 2.0, 3.0))
    assert [(r["seq"], r["time"], r["name"], r["value"], r["gateway_id"]) for r in rows] == [
        (2, 2.0, "dev-1/temp", 21.5, "gw-1")
    ]
    assert [r["seq"] for r in export_rows(store, "dev-1", 0, 1e300)] == [1, 2, 3]


def test_commands_table_for_the_command_tool(store: Store) -> None:
    store.save_command("dev-1", 7, "gw-1", "set_interval", {"s": 30}, b"cose", 10.0)
    store.save_command("dev-1", 7, "gw-1", "reboot", {}, b"other", 11.0)  # ignored
    assert store.save_command_result("dev-1", 7, True, "ok", b"res", 12.0) is True
    assert store.save_command_result("dev-1", 7, False, "again", b"res2", 13.0) is False
    assert store.save_command_result("dev-1", 8, True, "ok", b"res", 12.0) is False
    (row,) = store.query("SELECT action, args, result_ok, result_detail, result_at FROM commands")
    assert (row[0], row[1], bool(row[2]), row[3], row[4]) == (
        "set_interval",
        '{"s": 30}',
        True,
        "ok",
        12.0,
    )


def test_postgres_down_is_transient_and_reconnect_resumes(pg: Postgres) -> None:
    s = open_store(pg.url)
    try:
        s.commit([rec(1)], [], "a")
        pg.stop("immediate")
        with pytest.raises(TransientError):
            s.commit([rec(2)], [], "a")
        with pytest.raises(TransientError):
            s.reconnect()
        pg.start()
        s.reconnect()
        assert s.commit([rec(2), rec(1)], [], "a").stored == 1
        assert s.query("SELECT seq FROM records ORDER BY seq") == [(1,), (2,)]
    finally:
        s.close()


def test_a_different_record_under_a_stored_seq_is_a_conflict_not_a_duplicate(
    store: Store,
) -> None:
    keys = KEYS
    other = check(
        Delivery("citysense/v1/gw-2/dev-1/records", NODE.record(1, value=99.0), 2.0), keys
    )
    r1 = store.commit([rec(1), rec(1)], [], "a")
    r2 = store.commit([other, rec(1)], [], "a")
    r3 = store.commit(
        [
            rec(2),
            check(
                Delivery("citysense/v1/gw-2/dev-1/records", NODE.record(2, value=99.0), 2.0), keys
            ),
        ],
        [],
        "a",
    )
    assert [(r.stored, r.duplicates, r.refused) for r in (r1, r2, r3)] == [
        (1, 1, 0),
        (0, 1, 1),
        (1, 0, 1),
    ]
    assert [bytes(c) for (c,) in store.query("SELECT cose FROM records ORDER BY seq")] == [
        NODE.record(1),
        NODE.record(2),
    ]
    assert store.query("SELECT reason, gateway_id, n FROM quarantine") == [
        ("seq-conflict", "gw-2", 1),
        ("seq-conflict", "gw-2", 1),
    ]
    e = ledger(store)["devices"]["dev-1"]
    assert (e["records"], e["duplicates"], e["rejected"]) == (2, 2, {"seq-conflict": 2})
