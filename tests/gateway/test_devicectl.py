"""`citysense-gateway device show|reset-seq`: see and repair a device's replay state, with
the service stopped (the CLI takes the agent's lock) and running (through the agent)."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from gwsupport import Pty, make_node, start_gateway, stop, wait_log, write_config, write_entry
from support import REPO

from gateway.devicectl import REQUESTS, serve_requests
from gateway.protocol import FrameType, decode_ack, decode_nack
from gateway.queue import NewRecord, Queue
from gateway.store import key_id


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_show_and_reset_with_the_service_stopped(tmp_path: Path) -> None:
    node = make_node("esp32-0000000000c1")
    cfg = write_config(tmp_path / "gw.toml")
    write_entry(tmp_path / "registry", node)
    kid = key_id(node.public_key)
    q = Queue.open(tmp_path / "state" / "queue.sqlite3", 10**7)
    q.store([NewRecord(node.device_id, s, 0, b"x", None, kid) for s in (10, 11, 900)])
    q.delete([r.id for r in q.peek(0, 10) if r.seq == 900])  # the poisoned one went up
    q.close()

    shown = cli("device", "show", node.device_id, "--config", str(cfg), "--json")
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert info["registry"] == {
        "status": "active",
        "key_id": kid,
        "seq_floor": 1795582800000,
    }  # enrolled_at
    assert info["queue"]["keys"] == {kid: 900} and info["queue"]["queued"] == 2

    refused = cli("device", "reset-seq", node.device_id, "--config", str(cfg))
    assert refused.returncode == 2 and "Add --yes" in refused.stderr

    done = cli("device", "reset-seq", node.device_id, "--config", str(cfg), "--yes")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"reset-seq {node.device_id} via queue file (service stopped)")
    q = Queue.open(tmp_path / "state" / "queue.sqlite3", 10**7)
    assert q.high_seq(node.device_id, kid) == 11  # down to what is still queued
    q.close()
    (line,) = (tmp_path / "state" / "device-actions.log").read_text().splitlines()
    assert json.loads(line)["via"] == "offline"

    unknown = cli("device", "show", "esp32-nobody", "--config", str(cfg))
    assert unknown.returncode == 4 and "not in the registry" in unknown.stderr


def test_reset_goes_through_the_running_service(tmp_path: Path) -> None:
    """With the agent holding the queue, the CLI must not write it behind the agent's back:
    the agent applies the reset between two group commits and the device's lower seqs
    are accepted again."""
    node = make_node("esp32-0000000000c2")
    cfg = write_config(tmp_path / "gw.toml")
    write_entry(tmp_path / "registry", node)
    pty = Pty(tmp_path / "tty0")
    log = tmp_path / "gw.log"
    gw = start_gateway(cfg, log)
    try:
        wait_log(log, "event=port-open")
        pty.write(node.record_frame(500))
        pty.wait_for(lambda fs: any(f.type == FrameType.ACK for f in fs))
        second = start_gateway(cfg, tmp_path / "gw2.log")  # same state dir: refused
        assert second.wait(30) != 0
        assert "is in use by a running citysense-gateway" in (tmp_path / "gw2.log").read_text()

        done = cli("device", "reset-seq", node.device_id, "--config", str(cfg), "--yes")
        assert done.returncode == 0, done.stderr + done.stdout
        assert "via the running service" in done.stdout
        result = json.loads(done.stdout.split(": ", 1)[1])
        assert result["ok"] is True and result[key_id(node.public_key)] == 500
        wait_log(log, "event=reset-seq")
        # 500 is still queued (no broker): the replay state stays at it, 400 is a replay
        pty.write(node.record_frame(400))
        pty.wait_for(
            lambda fs: any(f.type == FrameType.NACK and decode_nack(f.body)[0] == 400 for f in fs)
        )
        pty.write(node.record_frame(501))
        pty.wait_for(
            lambda fs: any(f.type == FrameType.ACK and decode_ack(f.body) == 501 for f in fs)
        )
    finally:
        stop(gw)
        pty.close()


def test_a_request_whose_answer_cannot_be_written_does_not_end_the_agent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A full or broken state directory: the action is carried out once and logged; the
    audit line and the answer file fail (here: directories in their place). That OSError
    used to leave serve_requests and end the agent's request task, and with it the agent."""
    folder = tmp_path / REQUESTS
    folder.mkdir()
    (folder / "r1.json").write_text(json.dumps({"action": "ota-offer", "device": "n1"}))
    (folder / "r1.done.json").mkdir()
    (tmp_path / "device-actions.log").mkdir()
    calls: list[str] = []

    async def handler(device: str, **extra: str) -> dict[str, Any]:
        calls.append(device)
        return {"sent_now": True}

    with caplog.at_level(logging.WARNING, logger="citysense.devicectl"):
        asyncio.run(serve_requests(tmp_path, {"ota-offer": handler}))
        asyncio.run(serve_requests(tmp_path, {"ota-offer": handler}))
    assert calls == ["n1"]  # once: the request is gone, not carried out again
    assert not (folder / "r1.json").exists()
    assert "event=ota-offer device=n1 via=agent" in caplog.text
    assert "event=request-answer-failed request=r1.json" in caplog.text
