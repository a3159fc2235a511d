"""`citysense-gateway device show|reset-seq ID`: an operator's view and repair of a
device's replay state, coordinated with a running agent.

A running agent holds an exclusive lock on `STATE_DIR/agent.lock` for its lifetime.
`reset-seq` takes that lock when it can (the service is stopped) and changes the queue
file itself; when the agent holds it, the request goes through the agent instead: a
JSON file in `STATE_DIR/requests/`, which the agent's `requests` task picks up within
half a second, carries out on the store's worker thread (between group commits, so no
batch sees half a reset) and answers with `<name>.done.json`. Either way the change is
logged (event=reset-seq, WARNING) and appended to `STATE_DIR/device-actions.log`.

What a reset does: the device's replay state (its highest stored seq, for every key) is
lowered to the highest seq of its records still queued, or forgotten if none is. It is
the repair for a device whose H is wrong (an old gateway accepted a poisoned seq; a node
restored from a backup): its next records are accepted again, as long as they are above
what is still queued.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from .logsafe import esc
from .queue import Queue, read_only_stats
from .registry import Registry
from .store import key_id

log = logging.getLogger("citysense.devicectl")

LOCK_NAME: Final = "agent.lock"
REQUESTS: Final = "requests"
ANSWER_WAIT: Final = 10.0


class AgentLockedError(Exception):
    """Another agent holds the state directory."""


@contextlib.contextmanager
def agent_lock(state_dir: Path) -> Iterator[None]:
    """Held by a running agent; raises AgentLockedError when somebody else holds it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise AgentLockedError(f"{state_dir} is in use by a running citysense-gateway") from exc
        yield
    finally:
        os.close(fd)


def audit(state_dir: Path, action: str, device: str, result: dict[str, Any], via: str) -> None:
    line = {"at": time.time(), "action": action, "device": device, "via": via, **result}
    log.warning("event=%s device=%s via=%s result=%s", action, esc(device), via, json.dumps(result))
    with open(state_dir / "device-actions.log", "a", encoding="utf-8") as f:
        f.write(json.dumps(line, sort_keys=True) + "\n")


def reset_offline(db_path: Path, max_bytes: int, device: str) -> dict[str, Any]:
    q = Queue.open(db_path, max_bytes)
    try:
        return dict(q.reset_replay(device))
    finally:
        q.close()


def request(state_dir: Path, action: str, device: str, **extra: str) -> dict[str, Any]:
    """Ask the running agent; its answer, or TimeoutError after ANSWER_WAIT seconds.
    `extra`: the action's own arguments (e.g. `ota-offer`'s bundle id)."""
    folder = state_dir / REQUESTS
    folder.mkdir(mode=0o700, exist_ok=True)
    name = uuid.uuid4().hex
    tmp = folder / f".{name}.tmp"
    tmp.write_text(json.dumps({"action": action, "device": device, **extra}))
    tmp.replace(folder / f"{name}.json")
    answer = folder / f"{name}.done.json"
    deadline = time.monotonic() + ANSWER_WAIT
    while time.monotonic() < deadline:
        if answer.exists():
            data: dict[str, Any] = json.loads(answer.read_text())
            answer.unlink()
            return data
        time.sleep(0.1)
    with contextlib.suppress(OSError):
        (folder / f"{name}.json").unlink()
    raise TimeoutError(f"the running gateway did not answer within {ANSWER_WAIT:g} s")


Handler = Callable[..., Awaitable[Mapping[str, Any]]]
"""handler(device, **extra) -> its result; ValueError: refused, the message says why."""


async def serve_requests(state_dir: Path, handlers: Mapping[str, Handler]) -> None:
    """Carry out pending requests (the agent calls this every half second)."""
    folder = state_dir / REQUESTS
    try:
        pending = sorted(p for p in folder.glob("*.json") if not p.name.endswith(".done.json"))
    except OSError:
        return
    for path in pending:
        try:
            req = json.loads(path.read_text())
            action, device = str(req["action"]), str(req["device"])
            extra = {str(k): str(v) for k, v in req.items() if k not in ("action", "device")}
            fn = handlers[action]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            result: dict[str, Any] = {"ok": False, "error": f"bad request: {exc}"}
        else:
            try:
                result = {"ok": True, **await fn(device, **extra)}
            except ValueError as exc:
                result = {"ok": False, "error": str(exc)}
            with contextlib.suppress(OSError):  # a full disk: audit() logged it before the file
                audit(state_dir, action, device, result, via="agent")
        done = path.with_name(path.name.removesuffix(".json") + ".done.json")
        try:
            done.write_text(json.dumps(result))
        except OSError as exc:  # the action stands (logged); the asking command times out
            log.error("event=request-answer-failed request=%s error=%s", path.name, exc)
        with contextlib.suppress(OSError):
            path.unlink()


def show(
    db_path: Path, registry_dir: Path, state: dict[str, Any] | None, device: str
) -> dict[str, Any]:
    """Everything the gateway knows of one device, from files only (safe while running)."""
    reg = Registry(registry_dir, db_path.parent)  # the synced copy beside the queue
    reg.refresh()
    entry = reg.get(device)
    out: dict[str, Any] = {"device": device, "registry": None, "queue": None, "live": None}
    if entry is not None:
        out["registry"] = {
            "status": "active" if entry.active else "revoked",
            "key_id": key_id(entry.public_key),
            "seq_floor": entry.floor,
        }
    if db_path.exists():
        stats = read_only_stats(db_path)
        devices = stats.get("devices")
        if isinstance(devices, dict):
            out["queue"] = devices.get(device)
    if state is not None and isinstance(state.get("devices"), dict):
        out["live"] = state["devices"].get(device)
    return out
