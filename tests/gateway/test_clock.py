"""TIME only from a synchronised clock (issue 12, finding 10): gateway/clock.py and the
agent's TIME loop, against the real kernel's adjtimex()."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from gwsupport import (
    Pty,
    make_node,
    scrape,
    start_gateway,
    stop,
    wait_log,
    write_config,
    write_entry,
)
from support import free_port

from gateway.clock import STA_UNSYNC, TIME_ERROR, Clock, ClockState, interpret, read_kernel
from gateway.protocol import FrameType, decode_ack

TIME_OK, TIME_INS, TIME_OOP = 0, 1, 3


@pytest.mark.parametrize(
    ("ret", "status", "synced", "state"),
    [
        (TIME_OK, 0x2001, True, "synchronised"),  # STA_PLL | STA_NANO, as chrony leaves it
        (TIME_INS, 0x0011, True, "synchronised"),  # a leap second pending: still disciplined
        (TIME_OOP, 0x0001, True, "synchronised"),
        (TIME_ERROR, 0x0040, False, "unsynchronised"),  # what a fresh boot reports
        (TIME_ERROR, 0x0000, False, "unsynchronised"),
        (TIME_OK, STA_UNSYNC, False, "unsynchronised"),
        (-1, 0, False, "unknown"),
    ],
)
def test_interpret(ret: int, status: int, synced: bool, state: str) -> None:
    got = interpret(ret, status)
    assert (got.synced, got.state) == (synced, state)


def test_kernel_answers_here() -> None:
    st = read_kernel()
    assert st.state in ("synchronised", "unsynchronised"), st.detail


def test_libc_is_looked_up_once_not_per_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """find_library("c") forks `ldconfig -p`: once per status-loop second it cost the
    agent ~0.8 ms of CPU and a fork of its whole address space (issue 17)."""
    import ctypes.util

    from gateway import clock

    calls: list[str] = []
    real = ctypes.util.find_library

    def counting(name: str) -> str | None:
        calls.append(name)
        return real(name)

    cached = getattr(clock, "_adjtimex", None)
    if cached is not None:
        cached.cache_clear()
    monkeypatch.setattr(ctypes.util, "find_library", counting)
    states = [read_kernel() for _ in range(5)]
    assert calls == ["c"]
    assert all(s.state != "unknown" for s in states)  # adjtimex answered each time


def test_cached_for_a_second_and_policy() -> None:
    now = [100.0]
    answers = [ClockState(False, "unsynchronised"), ClockState(True, "synchronised")]
    reads: list[float] = []

    def reader() -> ClockState:
        reads.append(now[0])
        return answers[min(len(reads) - 1, 1)]

    c = Clock(reader=reader, monotonic=lambda: now[0])
    assert not c.may_send_time()
    now[0] = 100.9
    assert not c.may_send_time() and reads == [100.0]  # cached
    now[0] = 101.0
    assert c.may_send_time() and reads == [100.0, 101.0]
    lab = Clock(require_sync=False, reader=lambda: ClockState(False, "unsynchronised"))
    assert lab.may_send_time() and not lab.state().synced


def run_gateway(
    tmp_path: Path, require_sync: str
) -> tuple[list[FrameType], dict[str, float], dict[str, Any]]:
    node = make_node("esp32-0000000000a7")
    metrics_port = free_port()
    cfg = write_config(
        tmp_path / "gw.toml",
        require_sync=require_sync,
        extra_time="interval_s = 0.5",
        listen=f'"127.0.0.1:{metrics_port}"',
    )
    write_entry(tmp_path / "registry", node)
    pty = Pty(tmp_path / "tty0")
    log = tmp_path / "gw.log"
    gw = start_gateway(cfg, log)
    try:
        wait_log(log, "event=port-open")
        pty.write(node.record_frame(1))  # a record (no HELLO) gives the device a route
        pty.wait_for(
            lambda fs: any(f.type == FrameType.ACK and decode_ack(f.body) == 1 for f in fs)
        )
        time.sleep(3.0)  # six TIME intervals
        pty.poll()
        metrics = scrape(metrics_port)
        status = json.loads((tmp_path / "state" / "status.json").read_text())
        return [f.type for f in pty.frames], metrics, status
    finally:
        stop(gw)
        pty.close()


@pytest.mark.skipif(read_kernel().synced, reason="this machine's clock is synchronised")
def test_unsynchronised_clock_withholds_time(tmp_path: Path) -> None:
    frames, metrics, status = run_gateway(tmp_path, "true")
    assert FrameType.TIME not in frames
    assert metrics["citysense_clock_synced"] == 0
    assert status["clock"]["state"] == "unsynchronised"
    assert status["clock"]["sending_time"] is False
    text = (tmp_path / "gw.log").read_text()
    assert "event=time-withheld clock=unsynchronised detail='adjtimex=5" in text
    assert text.count("event=time-withheld") == 1  # said once, not every interval


def test_require_sync_false_sends_time_anyway(tmp_path: Path) -> None:
    frames, metrics, status = run_gateway(tmp_path, "false")
    assert frames.count(FrameType.TIME) >= 3
    assert metrics["citysense_clock_synced"] == float(read_kernel().synced)
    assert status["clock"]["sending_time"] is True
    assert status["clock"]["require_sync"] is False
