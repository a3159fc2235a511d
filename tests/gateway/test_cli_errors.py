"""Operator-facing errors: a missing serial port is said in the log, and `status` /
`queue stats` without the right to read the service's state say so in one line."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from gwsupport import write_config

from gateway import cli
from gateway.config import SerialConfig
from gateway.ingest import SerialIngest


def test_missing_port_logged_once_then_open_when_it_appears(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = tmp_path / "ttyNODE0"
    ingest = SerialIngest((SerialConfig(port=str(port), baud=115200),), pipeline=None)  # type: ignore[arg-type]
    caplog.set_level(logging.WARNING, logger="citysense")
    assert ingest.matching() == {}
    assert ingest.matching() == {}  # the next scan does not repeat it
    lines = [r.getMessage() for r in caplog.records if "port-missing" in r.getMessage()]
    assert lines == [f"event=port-missing port={port} detail=no such device; rescanning every 1s"]
    port.write_bytes(b"")  # the device appears (hot-plug)
    st = port.stat()
    assert ingest.matching() == {str(port): (115200, (st.st_dev, st.st_ino, st.st_rdev))}
    assert ingest.missing == set()
    port.unlink()  # and goes away again: said again, once
    caplog.clear()
    assert ingest.matching() == {}
    assert [r.getMessage() for r in caplog.records if "port-missing" in r.getMessage()] == [
        f"event=port-missing port={port} detail=no such device; rescanning every 1s"
    ]


def _denied(*_a: object, **_k: object) -> None:
    raise PermissionError(13, "Permission denied", "/var/lib/citysense/queue.sqlite3")


def test_queue_stats_without_permission_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path / "gateway.toml")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "queue.sqlite3").write_bytes(b"")
    # tests run as root, which no file mode stops: the OS's answer to a technician
    # without sudo is simulated at the one call that reads the database
    monkeypatch.setattr(cli, "read_only_stats", _denied)
    rc = cli.main(["queue", "stats", "--config", str(cfg)])
    err = capsys.readouterr().err
    assert rc == 1
    assert err == (
        "citysense-gateway: Permission denied: /var/lib/citysense/queue.sqlite3 (run with sudo)\n"
    )


def test_status_without_permission_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path / "gateway.toml")
    real = Path.read_text

    def read_text(self: Path, *a: object, **k: object) -> str:
        if self.parent == tmp_path / "state":  # the agent's state file: the service's
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", read_text)
    rc = cli.main(["status", "--config", str(cfg)])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith(f"citysense-gateway: Permission denied: {tmp_path / 'state'}/")
    assert err.endswith(" (run with sudo)\n") and err.count("\n") == 1


_LOG_PROBE = """
import logging, os, sys
from gateway import cli
st = os.fstat(2)
if sys.argv[1] == "journal":
    os.environ["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
else:
    os.environ["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino + 1}"  # someone else's stream
cli._setup_logging("info")
logging.getLogger("citysense.ingest").warning("event=port-missing port=/dev/x")
logging.getLogger("citysense.pipeline").info("event=hello device=d")
"""


@pytest.mark.parametrize("where", ["journal", "elsewhere"])
def test_journal_lines_carry_their_syslog_priority(tmp_path: Path, where: str) -> None:
    """Under systemd (stderr is the JOURNAL_STREAM) each line starts with <priority>, so
    journald files WARNING as 4 and INFO as 6; anywhere else lines carry a timestamp."""
    import subprocess
    import sys

    err = tmp_path / "stderr"
    with err.open("wb") as f:
        subprocess.run([sys.executable, "-c", _LOG_PROBE, where], stderr=f, check=True, timeout=60)
    lines = err.read_text().splitlines()
    if where == "journal":
        assert lines == [
            "<4>level=WARNING logger=citysense.ingest event=port-missing port=/dev/x",
            "<6>level=INFO logger=citysense.pipeline event=hello device=d",
        ]
    else:
        assert len(lines) == 2 and not any(line.startswith("<") for line in lines)
        assert lines[0].endswith(
            " level=WARNING logger=citysense.ingest event=port-missing port=/dev/x"
        )
