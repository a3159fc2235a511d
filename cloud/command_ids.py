"""Command ids that never repeat for a device: max(Unix ms now, last id used + 1).

The node executes a COMMAND only if its id is above the last one it accepted, so an id
must grow for each device across every send, whoever sends it. Both parts are needed:
- the time part: a new operator machine (or a lost state dir) continues above any id an
  earlier send used, as long as the clocks are roughly right (ids are ms, so they also
  stay above anything signed before);
- the persisted part (`command-ids.json` under [state] dir, per device): two sends in
  the same millisecond, or a clock stepped backwards, still get a larger id.
The file is updated under an exclusive lock (fcntl.flock on `command-ids.lock`) by temp
file + fsync + rename, and BEFORE the command is published: an id is never handed out
twice, even if the tool dies between the two. Two operator machines whose clocks
disagree can still race: the node then refuses the lower id ("rejected: replay") and
the operator sends again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from citysense_formats.durable import replace_file

from .errors import CloudError
from .statelock import locked

IDS_FILE = "command-ids.json"


class IdStoreError(CloudError):
    exit_code = 6


def _load(path: Path) -> dict[str, int]:
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise IdStoreError(
            f"{path} is unreadable ({exc}): move it aside; ids then continue from the clock"
        ) from exc
    if not isinstance(obj, dict):
        raise IdStoreError(f"{path}: expected a JSON object: move it aside")
    return {str(k): v for k, v in obj.items() if type(v) is int}


def _store(path: Path, ids: dict[str, int]) -> None:
    replace_file(path, json.dumps(ids, sort_keys=True, indent=1).encode(), 0o600)


def next_id(state_dir: Path, device_id: str, now_ms: int | None = None) -> int:
    """A new command id for `device_id`, persisted before it is returned."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    path = state_dir / IDS_FILE
    with locked(state_dir, "command-ids.lock", IdStoreError):
        ids = _load(path)
        cid = max(now, ids.get(device_id, 0) + 1)
        ids[device_id] = cid
        try:
            _store(path, ids)
        except OSError as exc:
            raise IdStoreError(f"cannot write {path} ({exc.strerror}): disk full?") from exc
    return cid
