"""PostgreSQL for the cloud store (psycopg 3): batch inserts through unnest() and COPY.

A batch's records go in one INSERT ... SELECT FROM unnest(arrays) ON CONFLICT DO NOTHING
RETURNING key: the rows returned are exactly the new records (a concurrent instance
inserting the same key waits on it and then skips it). Their readings follow by COPY,
which needs no conflict handling: a reading is written only by the transaction that
inserted its record. Rows are in key order so two instances lock keys in one order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from .errors import DatabaseError
from .records import Accepted
from .store import Store, TransientError

CONNECT_TIMEOUT_S = 5
SCHEMA_LOCK = 0x63697479  # advisory lock id held while the schema is created

_INSERT_RECORDS = (
    "INSERT INTO records (device_id, seq, boot, time_base, gateway_id, cose, gw_received_ms,"
    " received_at, stored_at, instance)"
    " SELECT d, s, b, tb, g, c, gw, ra, %s, %s FROM unnest("
    "%s::text[], %s::bigint[], %s::bigint[], %s::smallint[], %s::text[], %s::bytea[],"
    " %s::bigint[], %s::float8[]) AS t(d, s, b, tb, g, c, gw, ra)"
    " ON CONFLICT DO NOTHING RETURNING device_id, seq"
)
_COPY_READINGS = (
    "COPY readings (device_id, seq, idx, time, boot_time, name, unit, value, string, bool, sum)"
    " FROM STDIN"
)


def _redact(url: str) -> str:
    """The URL without a password, for messages."""
    head, sep, tail = url.rpartition("@")
    if not sep:
        return url
    scheme, _, userinfo = head.partition("://")
    return f"{scheme}://{userinfo.split(':', 1)[0]}@{tail}"


def _line(exc: Exception) -> str:
    """libpq's messages span lines; ours are one."""
    return " ".join(str(exc).split()) or type(exc).__name__


class PgStore(Store):
    dialect = "postgresql"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.where = _redact(url)
        self.conn = self._connect()

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        try:
            return psycopg.connect(self.url, connect_timeout=CONNECT_TIMEOUT_S)
        except psycopg.Error as exc:
            raise TransientError(f"database {self.where}: cannot connect ({_line(exc)})") from exc

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cur = self.conn.execute(sql, tuple(params))
        return cur.fetchall() if cur.description is not None else []

    def _schema_lock(self) -> None:
        self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(sql, rows)

    def _insert_records(self, rows: list[Accepted], instance: str, now: float) -> set[Any]:
        cols: list[list[Any]] = [[] for _ in range(8)]
        for r in rows:
            for col, v in zip(
                cols,
                (
                    r.device_id,
                    r.seq,
                    r.boot,
                    r.time_base,
                    r.gateway_id,
                    r.cose,
                    r.gw_received_ms,
                    r.received_at,
                ),
                strict=True,
            ):
                col.append(v)
        cur = self.conn.execute(_INSERT_RECORDS, (now, instance, *cols))
        return {(d, s) for d, s in cur.fetchall()}

    def _stored_cose(self, keys: list[tuple[str, int]]) -> dict[tuple[str, int], bytes]:
        cur = self.conn.execute(
            "SELECT r.device_id, r.seq, r.cose FROM records r JOIN"
            " unnest(%s::text[], %s::bigint[]) AS k(d, s) ON r.device_id = k.d AND r.seq = k.s",
            ([d for d, _ in keys], [q for _, q in keys]),
        )
        return {(d, q): bytes(c) for d, q, c in cur.fetchall()}

    def _insert_readings(self, rows: list[Accepted]) -> None:
        with self.conn.cursor() as cur, cur.copy(_COPY_READINGS) as copy:
            for r in rows:
                for x in r.readings:
                    copy.write_row(x.row(r.device_id, r.seq))

    def _transaction_end(self, ok: bool) -> None:
        if ok:
            self.conn.commit()
        else:
            self.conn.rollback()

    def _guard(self, exc: Exception) -> Exception:
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            return TransientError(f"database {self.where}: {_line(exc)}")
        if isinstance(exc, psycopg.Error):
            return DatabaseError(f"database {self.where}: {_line(exc)}")
        return exc

    def reconnect(self) -> None:
        self.close()
        self.conn = self._connect()

    def close(self) -> None:
        try:
            self.conn.close()
        except psycopg.Error:
            return
