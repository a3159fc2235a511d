"""citysense-cloud ingest/report/export: bad input is one line and its exit code; [ingest]."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cloudsupport import run_cli
from gwsupport import make_node
from support import free_port

from cloud import config
from cloud.records import Delivery, check
from cloud.store import open_store
from gateway.registry import Device


def test_ingest_table_defaults_and_problems(tmp_path: Path) -> None:
    assert config.load(None).ingest == config.IngestConfig("citysense-ingest", 604800, 500)
    p = tmp_path / "cloud.toml"
    p.write_text(
        '[ingest]\ngroup = "g/x"\nsession_expiry = 0\nbatch = true\ncolour = 1\n'
        'subscription = "both"\n'
    )
    with pytest.raises(config.ConfigError) as ei:
        config.load(p)
    assert ei.value.problems == [
        "ingest.colour: unknown key",
        "ingest.group: expected 1..64 of [A-Za-z0-9._-], got 'g/x'",
        "ingest.subscription: expected shared or plain, got 'both'",
        "ingest.session_expiry: expected an integer 60..4294967294, got 0",
        "ingest.batch: expected an integer 1..10000, got True",
    ]
    p.write_text('[ingest]\ngroup = "fleet-a"\nsession_expiry = 3600\nbatch = 50\n')
    assert config.load(p).ingest == config.IngestConfig("fleet-a", 3600, 50)
    p.write_text('[ingest]\nsubscription = "plain"\n')
    assert config.load(p).ingest.subscription == "plain"


def one_line(res: object, code: int, start: str) -> None:
    assert res.returncode == code, (res.stdout, res.stderr)  # type: ignore[attr-defined]
    lines = res.stderr.splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 1 and lines[0].startswith(start), lines


def test_bad_instance_name(tmp_path: Path) -> None:
    (tmp_path / "reg").mkdir()
    res = run_cli(
        "--broker", "mqtt://127.0.0.1:1", "--registry", str(tmp_path / "reg"),
        "--database", f"sqlite:///{tmp_path}/c.db", "ingest", "--instance", "a b/c",
    )  # fmt: skip
    one_line(res, 2, "citysense-cloud: --instance 'a b/c': expected 1..64 of [A-Za-z0-9._-]")


def test_database_unreachable_at_start(tmp_path: Path) -> None:
    (tmp_path / "reg").mkdir()
    url = f"postgresql://u:secret@127.0.0.1:{free_port()}/db"
    res = run_cli(
        "--broker", "mqtt://127.0.0.1:1", "--registry", str(tmp_path / "reg"),
        "--database", url, "ingest",
    )  # fmt: skip
    one_line(res, 6, "citysense-cloud: database postgresql://u@127.0.0.1:")
    assert "secret" not in res.stderr
    assert res.stderr.rstrip().endswith("check [database] url and that the server runs")


def test_bad_database_url_and_missing_registry(tmp_path: Path) -> None:
    one_line(run_cli("--database", "mysql://x", "report"), 2, "citysense-cloud: database.url:")
    res = run_cli("--broker", "mqtt://127.0.0.1:1", "--database", "sqlite:x.db", "ingest")
    one_line(res, 2, "citysense-cloud: config: no --config given: [registry] path missing")


def test_export_csv_jsonl_and_bad_time(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/c.db"
    node = make_node("dev-1")
    keys = {"dev-1": Device("dev-1", node.public_key, True)}
    store = open_store(db)
    topic = "citysense/v1/gw-1/dev-1/records"
    store.commit([check(Delivery(topic, node.record(s), 1.0), keys) for s in (1, 2, 3)], [], "t")
    store.close()
    res = run_cli(
        "--database", db, "export", "--device", "dev-1", "--since", "2", "--format", "csv"
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        "time,device_id,seq,idx,name,unit,value,string,bool,sum,boot_time,gateway_id",
        "2.0,dev-1,2,0,dev-1/temp,Cel,21.5,,,,,gw-1",
        "3.0,dev-1,3,0,dev-1/temp,Cel,21.5,,,,,gw-1",
    ]
    res = run_cli(
        "--database", db, "export", "--device", "dev-1", "--since", "1970-01-01T00:00:01Z",
        "--until", "1970-01-01T00:00:02", "--format", "jsonl",
    )  # fmt: skip
    assert [json.loads(x)["seq"] for x in res.stdout.splitlines()] == [1]
    res = run_cli("--database", db, "export", "--device", "dev-1", "--since", "yesterday")
    one_line(res, 2, "citysense-cloud: --since 'yesterday': expected Unix seconds or an ISO 8601")
