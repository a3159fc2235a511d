"""The cloud database: SQLite (embedded default) or PostgreSQL (psycopg 3), one schema.

`open_store(url)` -> Store. The ingest calls `commit(accepted, refused, instance)` once
per batch: one transaction that inserts the new records (dedup by primary key), their
readings, the ledger and rejection counters and the quarantine rows; the broker is
acknowledged only after it returned. Errors a retry can cure (connection lost, database
locked, deadlock between two instances) are `TransientError`; the caller backs off,
calls `reconnect()` and retries the same batch.

Readers (`query`) and the command tool (`save_command`, `save_command_result`) use the
same object. Placeholders in SQL given to `query` are `%s` for both databases.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import schema
from .errors import ConfigError, DatabaseError
from .records import Accepted

SQLITE_BUSY_MS = 10_000
_RETRY = frozenset(  # primary result codes a retry may cure
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
    }
)


class TransientError(DatabaseError):
    """The database is unreachable or busy for now: retry the same work later."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """A delivery refused by the ingest: counted, and its bytes kept in quarantine."""

    device_id: str
    reason: str
    detail: str
    gateway_id: str
    topic: str
    payload: bytes
    at: float


@dataclass(frozen=True, slots=True)
class CommitResult:
    stored: int
    duplicates: int
    refused: int


def _in_batch_dedup(accepted: Sequence[Accepted]) -> tuple[list[Accepted], int]:
    """First copy of each (device, seq) in key order, and how many copies were extra."""
    unique: dict[tuple[str, int], Accepted] = {}
    for a in accepted:
        unique.setdefault((a.device_id, a.seq), a)
    return [unique[k] for k in sorted(unique)], len(accepted) - len(unique)


class Store:
    """What both databases share; subclasses insert records and readings their own way."""

    dialect = ""

    def __init__(self, url: str) -> None:
        self.url = url
        self._g = schema.DIALECTS[self.dialect]["greatest"]

    # -- the connection, per database ----------------------------------------------------
    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError

    def _insert_records(self, rows: list[Accepted], instance: str, now: float) -> set[Any]:
        raise NotImplementedError

    def _insert_readings(self, rows: list[Accepted]) -> None:
        raise NotImplementedError

    def _transaction_end(self, ok: bool) -> None:
        raise NotImplementedError

    def reconnect(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _guard(self, exc: Exception) -> Exception:
        raise NotImplementedError

    def _schema_lock(self) -> None:
        """Serialise schema creation between instances starting together."""

    # -- shared --------------------------------------------------------------------------
    def init_schema(self) -> None:
        def work() -> None:
            self._schema_lock()
            for stmt in schema.statements(self.dialect):
                self._execute(stmt)
            if not self._execute("SELECT version FROM schema_version"):
                self._execute("INSERT INTO schema_version VALUES (%s)", (schema.SCHEMA_VERSION,))

        self._transaction(work)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """A read-only statement in its own transaction; `%s` placeholders."""
        rows: list[tuple[Any, ...]] = self._transaction(lambda: self._execute(sql, params))
        return rows

    def _transaction(self, work: Any) -> Any:
        try:
            result = work()
        except Exception as exc:
            err = self._guard(exc)
            self._end_quietly()
            raise err from exc
        try:
            self._transaction_end(True)
        except Exception as exc:
            raise self._guard(exc) from exc
        return result

    def _end_quietly(self) -> None:
        try:
            self._transaction_end(False)
        except Exception:  # the connection may be gone: reconnect() follows
            return

    def commit(
        self, accepted: Sequence[Accepted], refused: Sequence[Refusal], instance: str
    ) -> CommitResult:
        """Store a batch in one transaction; TransientError if a retry may succeed."""
        rows, _ = _in_batch_dedup(accepted)  # in-batch copies count as duplicates below

        def work() -> CommitResult:
            now = time.time()
            new_keys = self._insert_records(rows, instance, now)
            new = [r for r in rows if (r.device_id, r.seq) in new_keys]
            if new:
                self._insert_readings(new)
            clean, conflicts = self._split_conflicts(accepted, new, now)
            self._ledger(clean, new)
            self._refusals([*refused, *conflicts])
            return CommitResult(len(new), len(clean) - len(new), len(refused) + len(conflicts))

        result: CommitResult = self._transaction(work)
        return result

    def _split_conflicts(
        self, accepted: Sequence[Accepted], new: list[Accepted], now: float
    ) -> tuple[list[Accepted], list[Refusal]]:
        """Copies of a stored record (true duplicates) apart from other records under a
        stored seq (`seq-conflict`: signed by the device's key, yet not the same bytes;
        Ed25519 signs deterministically, so the same record is always the same bytes)."""
        canon = {(r.device_id, r.seq): r.cose for r in new}
        missing = sorted({(a.device_id, a.seq) for a in accepted} - canon.keys())
        if missing:
            canon.update(self._stored_cose(missing))
        clean, conflicts = [], []
        for a in accepted:
            if bytes(canon.get((a.device_id, a.seq), a.cose)) == a.cose:
                clean.append(a)
            else:
                topic = f"citysense/v1/{a.gateway_id}/{a.device_id}/records"
                detail = f"seq {a.seq} is stored with other bytes"
                conflicts.append(
                    Refusal(a.device_id, "seq-conflict", detail, a.gateway_id, topic, a.cose, now)
                )
        return clean, conflicts

    def _stored_cose(self, keys: list[tuple[str, int]]) -> dict[tuple[str, int], bytes]:
        out = {}
        for device_id, seq in keys:
            rows = self._execute(
                "SELECT cose FROM records WHERE device_id = %s AND seq = %s", (device_id, seq)
            )
            if rows:
                out[(device_id, seq)] = bytes(rows[0][0])
        return out

    def _ledger(self, accepted: Sequence[Accepted], new: list[Accepted]) -> None:
        stored = Counter(a.device_id for a in new)
        seen = Counter(a.device_id for a in accepted)
        last: dict[str, float] = {}
        for a in accepted:
            last[a.device_id] = max(last.get(a.device_id, 0.0), a.seen_at)
        rows = [(d, stored[d], seen[d] - stored[d], last[d]) for d in sorted(seen)]
        if rows:
            self._executemany(
                "INSERT INTO ledger (device_id, records, duplicates, last_seen)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (device_id) DO UPDATE SET"
                " records = ledger.records + excluded.records,"
                " duplicates = ledger.duplicates + excluded.duplicates,"
                f" last_seen = {self._g}(COALESCE(ledger.last_seen, 0), excluded.last_seen)",
                rows,
            )

    def _refusals(self, refused: Sequence[Refusal]) -> None:
        if not refused:
            return
        counts = Counter((r.device_id, r.reason) for r in refused)
        at = max(r.at for r in refused)
        self._executemany(
            "INSERT INTO rejections (device_id, reason, n, last_at) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (device_id, reason) DO UPDATE SET n = rejections.n + excluded.n,"
            f" last_at = {self._g}(rejections.last_at, excluded.last_at)",
            [(d, reason, n, at) for (d, reason), n in sorted(counts.items())],
        )
        by_digest: dict[bytes, tuple[Refusal, int]] = {}
        for r in refused:
            digest = hashlib.sha256(r.payload).digest()
            first, n = by_digest.get(digest, (r, 0))
            by_digest[digest] = (first, n + 1)
        self._executemany(
            "INSERT INTO quarantine (digest, reason, detail, gateway_id, device_id, topic,"
            " payload, n, first_at, last_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (digest) DO UPDATE SET n = quarantine.n + excluded.n,"
            f" last_at = {self._g}(quarantine.last_at, excluded.last_at)",
            [
                (
                    d,
                    r.reason,
                    r.detail,
                    r.gateway_id,
                    r.device_id,
                    r.topic,
                    r.payload,
                    n,
                    r.at,
                    r.at,
                )
                for d, (r, n) in sorted(by_digest.items())
            ],
        )

    # -- the command tool's table ---------------------------------------------------------
    def save_command(
        self,
        device_id: str,
        command_id: int,
        gateway_id: str,
        action: str,
        args: dict[str, Any],
        cose: bytes,
        sent_at: float,
    ) -> None:
        """Record a command as sent (the signed COSE bytes); a second save is ignored."""
        self._transaction(
            lambda: self._execute(
                "INSERT INTO commands (device_id, command_id, gateway_id, action, args, cose,"
                " sent_at) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (device_id, command_id) DO NOTHING",
                (device_id, command_id, gateway_id, action, json.dumps(args), cose, sent_at),
            )
        )

    def save_command_result(
        self, device_id: str, command_id: int, ok: bool, detail: str, cose: bytes, at: float
    ) -> bool:
        """Attach a result the caller has verified (device signature) to its command;
        False if no such command was saved. The first result stays."""
        rows = self._transaction(
            lambda: self._execute(
                "UPDATE commands SET result_ok = %s, result_detail = %s, result_cose = %s,"
                " result_at = %s WHERE device_id = %s AND command_id = %s"
                " AND result_at IS NULL RETURNING command_id",
                (ok, detail, cose, at, device_id, command_id),
            )
        )
        return bool(rows)


class SqliteStore(Store):
    dialect = "sqlite"

    def __init__(self, url: str, path: Path) -> None:
        super().__init__(url)
        self.path = path
        self.conn = self._connect()

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=SQLITE_BUSY_MS / 1000, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # committed = on disk, before the PUBACK
        except (OSError, sqlite3.Error) as exc:
            raise DatabaseError(f"database {self.path}: cannot open ({exc})") from exc
        return conn

    def _sql(self, sql: str) -> str:
        return sql.replace("%s", "?")

    def _schema_lock(self) -> None:
        self._begin()  # BEGIN IMMEDIATE: one writer at a time

    def _begin(self) -> None:
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN IMMEDIATE")

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self._begin()
        return self.conn.execute(self._sql(sql), tuple(params)).fetchall()

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._begin()
        self.conn.executemany(self._sql(sql), rows)

    def _insert_records(self, rows: list[Accepted], instance: str, now: float) -> set[Any]:
        self._begin()
        new: set[Any] = set()
        sql = (
            "INSERT INTO records (device_id, seq, boot, time_base, gateway_id, cose,"
            " gw_received_ms, received_at, stored_at, instance)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
        )
        for r in rows:
            cur = self.conn.execute(
                sql,
                (
                    r.device_id,
                    r.seq,
                    r.boot,
                    r.time_base,
                    r.gateway_id,
                    r.cose,
                    r.gw_received_ms,
                    r.received_at,
                    now,
                    instance,
                ),
            )
            if cur.rowcount == 1:
                new.add((r.device_id, r.seq))
        return new

    def _insert_readings(self, rows: list[Accepted]) -> None:
        self._executemany(
            "INSERT INTO readings (device_id, seq, idx, time, boot_time, name, unit, value,"
            " string, bool, sum) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [x.row(r.device_id, r.seq) for r in rows for x in r.readings],
        )

    def _transaction_end(self, ok: bool) -> None:
        if self.conn.in_transaction:
            self.conn.execute("COMMIT" if ok else "ROLLBACK")

    def _guard(self, exc: Exception) -> Exception:
        code = getattr(exc, "sqlite_errorcode", None)
        if isinstance(exc, sqlite3.OperationalError) and (code is None or code & 0xFF in _RETRY):
            return TransientError(f"database {self.path}: {exc}")
        if isinstance(exc, sqlite3.Error):
            return DatabaseError(f"database {self.path}: {exc}")
        return exc

    def reconnect(self) -> None:
        self.close()
        self.conn = self._connect()

    def close(self) -> None:
        try:
            self.conn.close()
        except sqlite3.Error:
            return


def open_store(url: str, base: Path | None = None) -> Store:
    """`sqlite:///ABSOLUTE/PATH`, `sqlite:RELATIVE` (to `base`) or `postgresql://...`;
    the schema is created if missing. DatabaseError if it cannot be opened."""
    scheme = url.split(":", 1)[0]
    try:
        store = _open(url, scheme, base)
        store.init_schema()
    except TransientError as exc:
        raise DatabaseError(f"{exc}; check [database] url and that the server runs") from exc
    return store


def _open(url: str, scheme: str, base: Path | None) -> Store:
    if scheme == "sqlite":
        parts = urlsplit(url)
        if not parts.path or parts.netloc:
            raise ConfigError(
                f"database.url: expected sqlite:///absolute/path or sqlite:relative, got {url!r}"
            )
        path = Path(parts.path)
        return SqliteStore(url, path if path.is_absolute() else (base or Path()) / path)
    if scheme in ("postgresql", "postgres"):
        from .store_pg import PgStore

        return PgStore(url)
    raise ConfigError(f"database.url: expected sqlite:... or postgresql://..., got {url!r}")
