"""The one file write in this package: replace a small file so a crash or power cut
leaves either the old content or the new, never a mix or an empty file.

Temp file beside the target (same filesystem), every byte written, fsync, rename over
the target, fsync of the folder (so the rename itself survives a power cut). Gateway,
cloud and provisioning state files all go through here.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(folder: Path) -> None:
    """Make the renames and creations in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_fsynced(path: Path, data: bytes, mode: int) -> None:
    """Create or truncate `path` (permissions `mode` when created), write all of `data`
    and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(
    path: Path, data: bytes, mode: int = 0o644, *, tmp: Path | None = None, sync_dir: bool = True
) -> None:
    """Atomically replace `path` with `data` (OSError on failure; the target is then
    unchanged). `tmp` defaults to `.<name>.tmp` beside it; `sync_dir=False` leaves the
    folder's fsync to a caller that replaces several files and syncs once."""
    tmp = tmp or path.with_name(f".{path.name}.tmp")
    write_fsynced(tmp, data, mode)
    os.replace(tmp, path)
    if sync_dir:
        fsync_dir(path.parent)
