"""The real gateway process against a hostile peer on a second real pty (issue 12,
findings 3, 4 and 6): a spoofed HELLO, replayed records, a flood of invented ids, and a
port that never reads. The genuine node on the first pty must be served throughout."""

from __future__ import annotations

import json
import time
from pathlib import Path

from gwsupport import Node, Pty, make_node, start_gateway, stop, wait_log, write_config, write_entry

from gateway.protocol import FrameType, Hello, decode_ack, encode_frame, encode_hello


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def hello(device_id: str, uptime_ms: int = 5_000) -> bytes:
    return encode_frame(
        FrameType.HELLO, encode_hello(Hello(device_id, "1.0", 1, "power-on", uptime_ms, 0))
    )


def acked(pty: Pty, seq: int, timeout: float = 5.0) -> float:
    """Seconds until the gateway ACKed seq on this port (bounded wait)."""
    t0 = time.monotonic()
    pty.wait_for(
        lambda fs: any(f.type == FrameType.ACK and decode_ack(f.body) >= seq for f in fs),
        timeout=timeout,
    )
    return time.monotonic() - t0


def status(tmp_path: Path, wait_for: object = None, timeout: float = 10.0) -> dict:  # type: ignore[type-arg]
    path = tmp_path / "state" / "status.json"
    deadline = time.monotonic() + timeout
    while True:
        try:
            data = json.loads(path.read_text())
            if wait_for is None or wait_for(data):  # type: ignore[operator]
                return data  # type: ignore[no-any-return]
        except (OSError, ValueError):
            pass
        assert time.monotonic() < deadline, "status.json never showed the expected state"
        time.sleep(0.2)


def start(tmp_path: Path, node: Node) -> tuple[object, Pty, Pty, Path]:
    cfg = write_config(tmp_path / "gw.toml")
    write_entry(tmp_path / "registry", node)
    real, evil = Pty(tmp_path / "tty0"), Pty(tmp_path / "tty1")
    log = tmp_path / "gw.log"
    gw = start_gateway(cfg, log)
    wait_log(log, "event=port-open", count=2)
    return gw, real, evil, log


def test_spoofed_hello_replay_and_a_flood_of_invented_ids(tmp_path: Path) -> None:
    node = make_node("esp32-0000000000a1")
    gw, real, evil, log = start(tmp_path, node)
    try:
        real.write(hello(node.device_id) + node.record_frame(1))
        acked(real, 1)
        status(tmp_path, lambda s: s["devices"].get(node.device_id, {}).get("port"))
        # the attacker: a HELLO for the node and a replay of its record, on tty1
        evil.write(hello(node.device_id, uptime_ms=10**12) + node.record_frame(1))
        acked(evil, 1)  # a duplicate: ACKed again, proves nothing
        s = status(tmp_path, lambda s: s["port_stats"].get(str(tmp_path / "tty1")) is not None)
        assert s["devices"][node.device_id]["port"] == str(tmp_path / "tty0")

        # 20,000 HELLOs with invented ids on tty1 while the node keeps reporting on tty0
        rss0 = rss_kib(gw.pid)  # type: ignore[attr-defined]
        flood = b"".join(hello(f"fake-{i:05d}") for i in range(20_000))
        worst = 0.0
        for k, off in enumerate(range(0, len(flood), 64 * 1024)):
            evil.write(flood[off : off + 64 * 1024])
            evil.poll()
            real.write(node.record_frame(2 + k))
            worst = max(worst, acked(real, 2 + k))
        grown = rss_kib(gw.pid) - rss0  # type: ignore[attr-defined]
        s = status(tmp_path, lambda s: s["devices"][node.device_id]["seq"] == 2 + k)
        size = (tmp_path / "state" / "status.json").stat().st_size
        print(f"\nflood: RSS +{grown} KiB, worst ACK wait {worst * 1000:.0f} ms, status {size} B")
        assert list(s["devices"]) == [node.device_id]
        assert s["devices"][node.device_id]["port"] == str(tmp_path / "tty0")
        assert size < 8 * 1024
        assert grown < 4 * 1024, f"RSS grew {grown} KiB under the flood"
        text = log.read_text()
        assert text.count("event=hello-unknown") < 200  # rate-limited, not one per id
        assert gw.poll() is None  # type: ignore[attr-defined]
    finally:
        stop(gw)  # type: ignore[arg-type]
        real.close()
        evil.close()


def test_a_port_that_never_reads_is_bounded(tmp_path: Path) -> None:
    """Replayed duplicates cost no verification budget and each gets an ACK: a peer that
    sends them and never reads made the gateway buffer ACKs without bound."""
    node = make_node("esp32-0000000000a2")
    gw, real, evil, log = start(tmp_path, node)
    try:
        real.write(node.record_frame(1))
        acked(real, 1)
        rss0 = rss_kib(gw.pid)  # type: ignore[attr-defined]
        dup = node.record_frame(1)
        for _ in range(200):  # 20,000 replays, never reading an answer
            evil.write(dup * 100)
        real.write(node.record_frame(2))
        acked(real, 2, timeout=30)
        s = status(
            tmp_path,
            lambda s: s["port_stats"].get(str(tmp_path / "tty1"), {}).get("write_dropped", 0) > 0,
        )
        dropped = s["port_stats"][str(tmp_path / "tty1")]["write_dropped"]
        grown = rss_kib(gw.pid) - rss0  # type: ignore[attr-defined]
        print(f"\nnever-reading port: {dropped} frames dropped, RSS +{grown} KiB")
        assert 0 < dropped < 20_000
        assert grown < 4 * 1024
        assert "event=port-write-dropped" in log.read_text()
    finally:
        stop(gw)  # type: ignore[arg-type]
        real.close()
        evil.close()
