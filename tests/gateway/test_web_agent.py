"""The agent's status page data end to end: a gateway process, a node on a real pty, and
exactly the numbers the records, rejects and bad frames should give, on /api/status,
in status.json and on /metrics."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gwsupport import Pty, make_node, scrape, start_gateway, stop, wait_log, write_config
from gwsupport import write_entry as add_to_registry
from support import free_port

from gateway.protocol import (
    Frame,
    FrameType,
    RecordPayload,
    decode_ack,
    encode_frame,
    encode_record_payload,
    sign1,
)

SYS = [
    {0: "battery", 1: "V", 2: 3.7},
    {0: "sys/heap", 1: "B", 2: 12000},
    {0: "sys/reset", 3: "watchdog"},
    {0: "sys/linkerr", 2: 1},
    {0: "sys/dropped", 2: 0},
]


def record_frame(seed: bytes, device_id: str, seq: int, heap: int) -> bytes:
    pack = [{-2: f"{device_id}/", 0: "temperature", 1: "Cel", 2: 20.5}, *SYS]
    pack[2] = {0: "sys/heap", 1: "B", 2: heap}
    if seq == 2:
        pack.append({0: "sys/ota", 3: "trial 0.2.0"})
    payload = encode_record_payload(RecordPayload(seq, 1, pack, 0))
    return encode_frame(FrameType.RECORD, sign1(seed, device_id.encode(), payload))


def acked(seq: int) -> Callable[[list[Frame]], bool]:
    return lambda fs: any(f.type == FrameType.ACK and decode_ack(f.body) == seq for f in fs)


def api(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=10) as r:
        data: dict[str, Any] = json.loads(r.read())
    return data


def test_page_data_from_a_running_gateway(tmp_path: Path) -> None:
    node = make_node("esp32-00000000web1")
    port = free_port()
    cfg = write_config(tmp_path / "gw.toml", listen=f'"127.0.0.1:{port}"')
    add_to_registry(tmp_path / "registry", node)
    pty = Pty(tmp_path / "tty0")
    log = tmp_path / "gw.log"
    gw = start_gateway(cfg, log)
    try:
        wait_log(log, "event=ready")
        pty.write(node.hello_frame(boot=1, trial=True))
        for seq in range(1, 6):
            pty.write(record_frame(node.seed, node.device_id, seq, heap=12000 + seq))
        pty.wait_for(acked(5))
        pty.write(record_frame(os.urandom(32), node.device_id, 6, heap=1))  # wrong key
        pty.write(b"\x05garbage-not-a-frame\x00")
        deadline = time.monotonic() + 20
        while True:
            page = api(port)
            if page["gateway"]["frame_errors"] and page["gateway"]["rejects"]:
                break
            assert time.monotonic() < deadline, page
            time.sleep(0.2)
        (n,) = page["nodes"]
        assert {k: n[k] for k in ("id", "seq", "boot", "firmware", "records_hour")} == {
            "id": node.device_id,
            "seq": 5,
            "boot": 1,
            "firmware": "test-1.0",
            "records_hour": 5,
        }
        assert (n["heap_free"], n["battery_v"], n["reset"]) == (12005, 3.7, "watchdog")
        assert (n["link_errors"], n["dropped"], n["state"]) == (1, 0, "ok")
        assert n["rejects"] == {"bad-signature": 1} and n["port"] == str(tmp_path / "tty0")
        assert (n["trial"], n["ota_note"], n["update"]) == (True, "trial 0.2.0", "on trial")
        assert n["transfer"] is None
        assert page["gateway"]["accepted"] == 5
        assert page["gateway"]["rejects"] == {"bad-signature": 1}
        assert sum(page["gateway"]["frame_errors"].values()) == 1
        assert page["queue"]["depth"] == 5 and page["uplink"]["state"] != "connected"
        assert page["uplink"]["broker"] == "mqtt://127.0.0.1:1"
        # the same numbers in status.json and on /metrics
        time.sleep(1.5)
        state = json.loads((tmp_path / "state" / "status.json").read_text())
        dev = state["devices"][node.device_id]
        assert (dev["seq"], sum(dev["per_minute"]), dev["heap_free"]) == (5, 5, 12005)
        assert state["counters"]["accepted"] == 5 and state["version"] == page["gateway"]["version"]
        m = scrape(port)
        assert m["citysense_records_accepted_total"] == 5
        assert m['citysense_records_rejected_total{reason="bad-signature"}'] == 1
        assert m["citysense_queue_depth"] == 5
    finally:
        stop(gw)
        pty.close()
