"""An exclusive lock on a file in the cloud tools' state directory, held while a
persisted counter (command ids, the registry version) is read, raised and written, so
two tools started at once never hand out the same number."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import CloudError


@contextlib.contextmanager
def locked(
    state_dir: Path, name: str, error: type[CloudError], busy: CloudError | None = None
) -> Iterator[None]:
    """Hold `state_dir/name` exclusively; `error` (one line) if the folder is unusable.
    With `busy`: raise it instead of waiting when another process holds the lock."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(state_dir / name, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise error(
            f"cannot use the state dir {state_dir} ({exc.strerror}): check [state] dir"
        ) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if busy is None else fcntl.LOCK_NB))
        except BlockingIOError:
            if busy is None:
                raise
            raise busy from None
        yield
    finally:
        os.close(fd)
