"""The lab's ingest process (citysense_lab/ingest.py): one that never gets its
subscription is stopped when the lab gives up on it, not left running."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from support import free_port

from citysense_lab.broker import BrokerTLS
from citysense_lab.ingest import CloudIngest
from provisioning import ca

BIN = Path(sys.executable).parent


def _running_with(text: str) -> list[str]:
    out = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes() if proc.name.isdigit() else b""
        except OSError:
            continue
        if text.encode() in cmd:
            out.append(cmd.replace(b"\0", b" ").decode(errors="replace"))
    return out


def test_an_ingest_that_never_subscribes_is_stopped(tmp_path: Path) -> None:
    ca.init_ca(tmp_path / "ca", "citysense test CA")
    ca.gateway_cert("ingest", tmp_path / "ingest", tmp_path / "ca")
    tls = BrokerTLS(
        tmp_path / "ca" / ca.CA_CERT,
        tmp_path / "ingest" / "gateway.crt",
        tmp_path / "ingest" / "gateway.key",
    )
    (tmp_path / "registry").mkdir()
    port = free_port()  # nothing listens: it retries, never subscribed
    ingest = CloudIngest(tmp_path, port, tls, tmp_path / "registry", lambda n: str(BIN / n), {})
    with pytest.raises(AssertionError, match="the cloud ingest's subscription"):
        ingest.start(timeout=3)
    assert "event=ingest-start instance=lab" in ingest.log.read_text()  # it did run
    assert ingest.proc is None and _running_with(str(ingest.config)) == []
