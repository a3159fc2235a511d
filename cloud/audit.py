"""An append-only audit file: one JSON object per line, fsync'd, never rewritten.

    AuditLog(state_dir / "command-audit.jsonl").append({"event": "send", ...})
    events, torn = AuditLog(path).read()

Each line is written with a single write() on an O_APPEND descriptor (so concurrent
writers never interleave inside a line) and fsync'd before append() returns. A line cut
short by a crash is skipped by read() and counted (`torn`), never repaired in place; the
next append starts a new line after it.
The file is created 0600: it names devices, gateways and what was done to them.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

from .errors import CloudError


class AuditError(CloudError):
    exit_code = 6


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, event: dict[str, Any]) -> None:
        line = json.dumps({"t": utc_now(), **event}, separators=(",", ":"), sort_keys=True)
        data = (line + "\n").encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise AuditError(
                f"cannot open the audit file {self.path} ({exc.strerror}): check [state] dir"
            ) from exc
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # a line torn by a crash stays alone (and skipped)
            if os.write(fd, data) != len(data):
                raise AuditError(f"short write to the audit file {self.path}: disk full?")
            os.fsync(fd)
        except OSError as exc:
            raise AuditError(
                f"cannot write the audit file {self.path} ({exc.strerror}): disk full?"
            ) from exc
        finally:
            os.close(fd)

    def read(self) -> tuple[list[dict[str, Any]], int]:
        """(events in file order, number of unreadable lines skipped)."""
        try:
            text = self.path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return [], 0
        except OSError as exc:
            raise AuditError(f"cannot read the audit file {self.path} ({exc.strerror})") from exc
        events: list[dict[str, Any]] = []
        torn = 0
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                torn += 1
                continue
            if isinstance(obj, dict):
                events.append(obj)
            else:
                torn += 1
        return events, torn
