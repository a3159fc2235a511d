"""A throwaway lab CA for one QEMU check run, made with the provisioning CLI the way an
operator would (`citysense-provision ca init`, `ca broker-cert`, `gateway-cert`): the
broker's server certificate (valid for `broker`, the name the guest uses, and host
loopback) and client certificates whose CN is the MQTT user name the broker's ACL checks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


def _provision() -> list[str]:
    exe = shutil.which("citysense-provision") or str(
        Path(sys.executable).with_name("citysense-provision")
    )
    return [exe]


class LabCA:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ, CITYSENSE_AUDIT=str(workdir / "audit.jsonl"))
        self._run("ca", "init", "--dir", str(workdir / "ca"))
        self.ca_file = workdir / "ca" / "ca.crt"

    def _run(self, *args: str) -> None:
        proc = subprocess.run(
            [*_provision(), *args], env=self.env, capture_output=True, text=True, timeout=120
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"citysense-provision {' '.join(args)}: {proc.stderr.strip() or proc.stdout}"
            )

    def issue(self, cn: str, server: bool = False) -> Pair:
        out = self.dir / cn
        if server:
            names = ["--dns", "broker", "--dns", "localhost", "--ip", "127.0.0.1"]
            names += ["--ip", "10.0.2.100"]
            self._run("ca", "broker-cert", "--ca", str(self.dir / "ca"), "--out", str(out), *names)
            return Pair(out / "broker.crt", out / "broker.key")
        self._run(
            "gateway-cert", "--gateway-id", cn, "--out", str(out), "--ca", str(self.dir / "ca")
        )
        return Pair(out / "gateway.crt", out / "gateway.key")
