"""The cloud database's tables, one shape for SQLite and PostgreSQL.

| table | key | what |
|---|---|---|
| records | device_id, seq | each verified record once: COSE bytes as received, gateway, times |
| readings | device_id, seq, idx | the SenML pack resolved (RFC 8428): name, time, unit, value |
| ledger | device_id | distinct records stored, duplicates suppressed, last seen |
| rejections | device_id, reason | refused deliveries counted ('' when no device can be named) |
| quarantine | sha256 of the bytes | each distinct refused payload once: reason, how often |
| commands | device_id, command_id | commands sent and their verified results (command tool) |

The dedup key is the records table's primary key and nothing else: a record is new exactly
when its INSERT ... ON CONFLICT DO NOTHING inserts a row, in the same transaction as its
readings and the ledger update, so a crash anywhere leaves all of them or none.
Times are Unix seconds (double precision); seqs are BIGINT (the protocol allows up to
2**63 - 1 here, as in the gateway's queue).
"""

from __future__ import annotations

from typing import Final

SCHEMA_VERSION: Final = 1

_TABLES: Final = """
CREATE TABLE IF NOT EXISTS records (
    device_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    boot BIGINT NOT NULL,
    time_base SMALLINT NOT NULL,
    gateway_id TEXT NOT NULL,
    cose {blob} NOT NULL,
    gw_received_ms BIGINT,
    received_at DOUBLE PRECISION NOT NULL,
    stored_at DOUBLE PRECISION NOT NULL,
    instance TEXT NOT NULL,
    PRIMARY KEY (device_id, seq)
);
CREATE TABLE IF NOT EXISTS readings (
    device_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    idx INTEGER NOT NULL,
    time DOUBLE PRECISION,
    boot_time DOUBLE PRECISION,
    name TEXT NOT NULL,
    unit TEXT,
    value DOUBLE PRECISION,
    string TEXT,
    bool BOOLEAN,
    sum DOUBLE PRECISION,
    PRIMARY KEY (device_id, seq, idx)
);
CREATE INDEX IF NOT EXISTS readings_device_time ON readings (device_id, time);
CREATE TABLE IF NOT EXISTS ledger (
    device_id TEXT PRIMARY KEY,
    records BIGINT NOT NULL DEFAULT 0,
    duplicates BIGINT NOT NULL DEFAULT 0,
    last_seen DOUBLE PRECISION
);
CREATE TABLE IF NOT EXISTS rejections (
    device_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    n BIGINT NOT NULL,
    last_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (device_id, reason)
);
CREATE TABLE IF NOT EXISTS quarantine (
    digest {blob} PRIMARY KEY,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    gateway_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload {blob} NOT NULL,
    n BIGINT NOT NULL,
    first_at DOUBLE PRECISION NOT NULL,
    last_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS commands (
    device_id TEXT NOT NULL,
    command_id BIGINT NOT NULL,
    gateway_id TEXT NOT NULL,
    action TEXT NOT NULL,
    args TEXT NOT NULL,
    cose {blob} NOT NULL,
    sent_at DOUBLE PRECISION NOT NULL,
    result_ok BOOLEAN,
    result_detail TEXT,
    result_cose {blob},
    result_at DOUBLE PRECISION,
    PRIMARY KEY (device_id, command_id)
);
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL
);
"""

DIALECTS: Final = {
    "sqlite": {"blob": "BLOB", "greatest": "MAX"},
    "postgresql": {"blob": "BYTEA", "greatest": "GREATEST"},
}


def statements(dialect: str) -> list[str]:
    """The CREATE statements for `dialect` (a key of DIALECTS), one per item."""
    text = _TABLES.format(**DIALECTS[dialect])
    return [s.strip() for s in text.split(";") if s.strip()]
