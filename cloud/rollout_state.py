"""A rollout's state, its rules, and the file it lives in. No I/O but the file.

Per device (rules as data, `_RANK` and `_EVENTS`):

    pending -> sent -> accepted -> staged -> trial -> confirmed
                  \\-> failed (refused by the gateway or the node, rolled back, refused in sys/ota)
    current: it already ran the release when the rollout started (sys/fw), nothing sent

A state only moves forward (by rank); failed and confirmed are final. `sent` -> `accepted`
comes from the node's signed COMMAND_RESULT (ok, "staging bundle=..."); every later step
from the `sys/ota` readings in its records in the cloud store, matched by the release's
version (staged/trial/confirmed/rolled-back) or by the bundle's first 16 hex (refused),
so a reading left from another release moves nothing. A COMMAND_RESULT that never came
(the answer lost) leaves the device `sent`: its records still move it on.

Waves: wave 0 is the canary (`--canary N`, the first N devices); the next wave is sent
only once every device of the current one is final (confirmed, current or failed). A
failed canary halts the rollout; with `halt_on_failure` every later wave has the canary's
size (1 without a canary) and any failure halts it; without, every device after the
canary goes in one wave and failures are reported, not halting.

The file: `<state dir>/rollout.json`, written by temp file + fsync + rename after every
change, so `rollout status` (another process) always reads a whole state.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from citysense_formats.durable import replace_file

FILE: Final = "rollout.json"
FINAL: Final = frozenset({"confirmed", "current", "failed"})
_RANK: Final = {
    "pending": 0,
    "sent": 1,
    "accepted": 2,
    "staged": 3,
    "trial": 4,
    "confirmed": 5,
    "current": 5,
    "failed": 6,
}
# sys/ota text -> (state, what names the release: "version" or "bundle")
_EVENTS: Final = (
    (re.compile(r"staged (\S+)$"), "staged", "version"),
    (re.compile(r"trial (\S+)$"), "trial", "version"),
    (re.compile(r"confirmed (\S+)$"), "confirmed", "version"),
    (re.compile(r"rolled-back (\S+): (.*)$"), "failed", "version"),
    (re.compile(r"refused ([0-9a-f]{16}): (.*)$"), "failed", "bundle"),
)


class StateFileError(ValueError):
    pass


@dataclass
class DeviceRun:
    device: str
    gateway: str
    wave: int
    state: str = "pending"
    command_id: int | None = None
    since_seq: int = 0  # the device's highest stored seq when the command went out
    detail: str = ""
    fw: str | None = None  # the last sys/fw reading seen
    updated_ms: int = 0


@dataclass
class Rollout:
    id: str
    release: str
    bundle: str
    seq: int
    canary: int
    halt_on_failure: bool
    expires_s: int
    started_ms: int
    state: str = "running"  # running | done | halted
    reason: str = ""
    devices: list[DeviceRun] = field(default_factory=list)

    # -- rules ---------------------------------------------------------------------------
    def move(self, run: DeviceRun, state: str, detail: str, now_ms: int) -> bool:
        """Forward only, final states stay; True if it moved."""
        if run.state in FINAL or _RANK[state] <= _RANK[run.state]:
            return False
        run.state, run.detail, run.updated_ms = state, detail, now_ms
        return True

    def reading(self, run: DeviceRun, text: str, now_ms: int) -> bool:
        """One `sys/ota` reading of the device; True if it moved the device. A device
        not sent the command yet is not moved (the reading is from before the rollout)."""
        if run.state == "pending":
            return False
        for pattern, state, names in _EVENTS:
            m = pattern.match(text)
            if m is None:
                continue
            ours = self.release if names == "version" else self.bundle[:16]
            if m.group(1) == ours:
                return self.move(run, state, text, now_ms)
            return False
        return False

    def wave_now(self) -> int | None:
        """The lowest wave with a device not final (None: all final)."""
        open_waves = [r.wave for r in self.devices if r.state not in FINAL]
        return min(open_waves) if open_waves else None

    def to_send(self) -> list[DeviceRun]:
        """The pending devices of the current wave, if the rollout goes on."""
        wave = self.wave_now()
        if self.state != "running" or wave is None:
            return []
        return [r for r in self.devices if r.wave == wave and r.state == "pending"]

    def judge(self, now_ms: int) -> None:
        """Halt or finish when the rules say so."""
        if self.state != "running":
            return
        failed = [r for r in self.devices if r.state == "failed"]
        canary_failed = [r for r in failed if r.wave == 0 and self.canary]
        if canary_failed or (failed and self.halt_on_failure):
            first = (canary_failed or failed)[0]
            what = "canary" if canary_failed else "device"
            self.state = "halted"
            self.reason = f"{what} {first.device} failed: {first.detail}"
            for r in self.devices:
                if r.state == "pending":
                    r.detail, r.updated_ms = "not sent: the rollout halted", now_ms
            return
        if self.wave_now() is None:
            self.state = "done"

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.devices:
            out[r.state] = out.get(r.state, 0) + 1
        return out


def plan(devices: list[tuple[str, str]], canary: int, halt_on_failure: bool) -> list[DeviceRun]:
    """(device, gateway) in order -> runs with their waves."""
    size = canary if canary else 1
    runs = []
    for i, (device, gateway) in enumerate(devices):
        if canary and i < canary:
            wave = 0
        elif halt_on_failure:
            wave = 1 + (i - canary) // size
        else:
            wave = 1
        runs.append(DeviceRun(device, gateway, wave))
    return runs


def save(state_dir: Path, r: Rollout) -> None:
    path = state_dir / FILE
    replace_file(path, json.dumps(asdict(r), indent=1, sort_keys=True).encode(), 0o600)


def load(state_dir: Path) -> Rollout | None:
    path = state_dir / FILE
    try:
        obj = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StateFileError(f"{path}: {exc}") from exc
    try:
        runs = [DeviceRun(**d) for d in obj.pop("devices")]
        return Rollout(**obj, devices=runs)
    except (TypeError, KeyError, AttributeError) as exc:
        raise StateFileError(f"{path}: not a rollout state ({exc})") from exc


def as_dict(r: Rollout) -> dict[str, Any]:
    return {**asdict(r), "counts": r.counts()}
