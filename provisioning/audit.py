"""Append-only audit log: one JSON line per action (who, when, what, device, key, firmware)."""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
from pathlib import Path
from typing import Any

from .errors import ProvisionError
from .registry import fingerprint


def default_path() -> Path:
    env = os.environ.get("CITYSENSE_AUDIT")
    if env:
        return Path(env)
    return Path.home() / ".local" / "state" / "citysense" / "audit.jsonl"


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


class Audit:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _open(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as exc:
            raise ProvisionError(
                f"cannot write the audit log {self.path} ({exc.strerror}),"
                " pass --audit FILE or set CITYSENSE_AUDIT to a writable path"
            ) from exc

    def check(self) -> None:
        """Fail before touching a device if the log cannot be written."""
        os.close(self._open())

    def record(
        self,
        what: str,
        *,
        device_id: str | None = None,
        public_key: str | None = None,
        firmware_sha256: str | None = None,
        **details: Any,
    ) -> dict[str, Any]:
        line: dict[str, Any] = {
            "when": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "who": _who(),
            "what": what,
            "device_id": device_id,
            "key_fingerprint": fingerprint(public_key) if public_key else None,
            "firmware_sha256": firmware_sha256,
        }
        line.update(details)
        data = (json.dumps(line, sort_keys=True) + "\n").encode()
        fd = self._open()
        try:
            os.write(fd, data)
            os.fsync(fd)
        except OSError as exc:
            raise ProvisionError(
                f"cannot append to the audit log {self.path} ({exc.strerror}), free disk space"
            ) from exc
        finally:
            os.close(fd)
        return line
