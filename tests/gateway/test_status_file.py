"""status.json is rewritten when its content changes, not every second (SD-card wear), and
`status` still tells a live agent from a stopped one by the file's own heartbeat."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from gwsupport import (
    Pty,
    make_node,
    mosquitto,
    start_gateway,
    stop,
    wait_log,
    write_config,
    write_entry,
)

from gateway.agent import STATUS_HEARTBEAT_S
from gateway.protocol import FrameType, decode_ack

REPO = Path(__file__).resolve().parents[2]


def cli_status(cfg: Path) -> tuple[int, dict[str, object]]:
    r = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "status", "--json", "--config", str(cfg)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return r.returncode, json.loads(r.stdout)


def wait_status(path: Path, pred: object, timeout: float = 10.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            data: dict[str, object] = json.loads(path.read_text())
            if pred(data):  # type: ignore[operator]
                return data
        except (OSError, ValueError):
            pass
        assert time.monotonic() < deadline, "status.json never showed the expected state"
        time.sleep(0.1)


def test_idle_agent_leaves_the_file_alone_and_writes_a_change(tmp_path: Path) -> None:
    node = make_node("esp32-0000000stat1")
    with mosquitto(tmp_path / "broker") as broker:
        cfg = write_config(tmp_path / "gw.toml", url=f'"mqtt://127.0.0.1:{broker.port}"')
        write_entry(tmp_path / "registry", node)
        pty = Pty(tmp_path / "tty0")
        log = tmp_path / "gw.log"
        gw = start_gateway(cfg, log)
        path = tmp_path / "state" / "status.json"
        try:
            wait_log(log, "event=port-open")
            # connected and the port listed: both are written by the first check after
            # they happen, which may be two checks (the port opens while one is written)
            first = wait_status(
                path, lambda s: s["uplink"]["state"] == "connected" and bool(s["ports"])
            )
            inode = path.stat().st_ino
            time.sleep(3.5)  # the agent looks at the status every second
            assert path.stat().st_ino == inode, "an idle agent rewrote status.json"
            assert json.loads(path.read_text())["written_at"] == first["written_at"]
            code, out = cli_status(cfg)
            assert code == 0 and out["running"] is True

            pty.write(node.record_frame(1))
            pty.wait_for(
                lambda fs: any(f.type == FrameType.ACK and decode_ack(f.body) == 1 for f in fs)
            )
            t0 = time.monotonic()
            s = wait_status(path, lambda s: node.device_id in s["devices"], timeout=5)
            assert time.monotonic() - t0 < 2.5  # a change is written within the next check
            assert s["devices"][node.device_id]["seq"] == 1  # type: ignore[index]
            assert s["accepted"] == 1
            assert s["rewritten_within_s"] == STATUS_HEARTBEAT_S
        finally:
            stop(gw)
            pty.close()


def test_status_judges_liveness_by_the_files_own_heartbeat(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "gw.toml")
    state = tmp_path / "state"
    state.mkdir()
    me = os.getpid()  # a live process
    cases = [
        ({"written_at": time.time() - 30, "rewritten_within_s": 60.0}, 0, True),
        ({"written_at": time.time() - 2 * 60 - 15, "rewritten_within_s": 60.0}, 3, False),
        ({"written_at": time.time() - 30}, 3, False),  # an older agent: every second
        ({"written_at": time.time() - 3}, 0, True),
    ]
    for fields, want_code, want_running in cases:
        (state / "status.json").write_text(json.dumps({"pid": me, **fields}))
        code, out = cli_status(cfg)
        assert (code, out["running"]) == (want_code, want_running), fields
