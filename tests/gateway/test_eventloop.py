"""gateway/eventloop.py: the agent runs on uvloop where it is installed and on asyncio's
loop when told so; either way records go end to end, and a wrong setting is a clear
error before anything starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from gwsupport import (
    Pty,
    Subscriber,
    make_node,
    mosquitto,
    start_gateway,
    stop,
    wait_log,
    write_config,
    write_entry,
)
from support import REPO

from gateway import eventloop
from gateway.protocol import FrameType, decode_ack

uvloop = pytest.importorskip("uvloop")  # a dependency on x86_64 and aarch64


def test_the_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(eventloop.ENV, raising=False)
    factory, name = eventloop.loop_factory()
    assert factory is uvloop.new_event_loop and name == f"uvloop-{uvloop.__version__}"
    monkeypatch.setenv(eventloop.ENV, "asyncio")
    assert eventloop.loop_factory() == (None, "asyncio")
    monkeypatch.setenv(eventloop.ENV, "libev")
    with pytest.raises(ValueError, match="CITYSENSE_EVENT_LOOP='libev': expected one of auto"):
        eventloop.loop_factory()


def test_without_uvloop_auto_falls_back_and_uvloop_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop -> ImportError
    monkeypatch.setenv(eventloop.ENV, "auto")
    assert eventloop.loop_factory() == (None, "asyncio")
    monkeypatch.setenv(eventloop.ENV, "uvloop")
    with pytest.raises(ValueError, match="uvloop is not installed"):
        eventloop.loop_factory()


@pytest.mark.parametrize("choice", ["auto", "asyncio"])
def test_records_end_to_end_on_either_loop(tmp_path: Path, choice: str) -> None:
    node = make_node("esp32-0000000000f1")
    with mosquitto(tmp_path / "broker") as broker:
        cfg = write_config(tmp_path / "gw.toml", url=f'"mqtt://127.0.0.1:{broker.port}"')
        write_entry(tmp_path / "registry", node)
        pty = Pty(tmp_path / "tty0")
        sub = Subscriber(broker.port, "citysense/#")
        log = tmp_path / "gw.log"
        gw = start_gateway(cfg, log, env={eventloop.ENV: choice})
        try:
            want = "asyncio" if choice == "asyncio" else f"uvloop-{uvloop.__version__}"
            wait_log(log, f"event=ready gateway=gw-test queue_depth=0 event_loop={want}\n")
            wait_log(log, "event=port-open")
            for seq in range(1, 11):
                pty.write(node.record_frame(seq))
            pty.wait_for(
                lambda fs: any(f.type == FrameType.ACK and decode_ack(f.body) == 10 for f in fs)
            )
            got = sub.wait_count("/records", 10)
            assert [m[1] for m in got] == [node.record(s) for s in range(1, 11)]
        finally:
            sub.close()
            assert stop(gw) == 0
            pty.close()


def test_a_wrong_setting_stops_the_agent_before_it_starts(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "gw.toml")
    res = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "run", "--config", str(cfg)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin", eventloop.ENV: "fast"},
    )  # fmt: skip
    assert res.returncode == 2
    assert res.stderr == (
        "citysense-gateway: CITYSENSE_EVENT_LOOP='fast': expected one of auto, uvloop, asyncio\n"
    )
    assert not (tmp_path / "state" / "queue.sqlite3").exists()
