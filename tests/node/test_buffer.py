"""Flash buffer rules under the real micropython (-X heapsize=96k)."""

from __future__ import annotations

from pathlib import Path

from nodeproc import run


def test_drop_oldest_ack_and_torn_tail(tmp_path: Path) -> None:
    out = run("bufcheck.py", flash=tmp_path, heap="96k").splitlines()
    assert out == [
        # 12 entries, 2 per segment, 3 segments kept: the 6 oldest dropped and counted
        "PENDING 6 7 12 DROPPED 6",
        "SEGS ['00000003.seg', '00000004.seg', '00000005.seg']",
        # ACK 9 forgets 7..9 and deletes segment 3 (7, 8) but not 4 (9 and 10)
        "ACKED 3 3 ['00000004.seg', '00000005.seg']",
        # after reboot: 9 is back (segment 4 not fully acked: at-least-once), torn tail ignored
        "RECOVERED 4 9 12",
        "AFTER 5 True ['00000004.seg', '00000005.seg', '00000006.seg']",
        "REOPEN 5 [9, 10, 11, 12, 13]",
        # all acked: data/ is empty (a drained node holds no record), the next append
        # starts a new segment, and a reboot finds only that record
        "DRAINED 5 0 []",
        "ACKED14 1 0 []",
        "NEXT 1 True ['00000000.seg']",
        "REBOOT 1 15",
    ]
