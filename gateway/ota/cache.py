"""The gateway's bundle cache: verified bundles as `<bundle id>.csb` files in one directory.

Rules:
- `put` verifies the whole bundle (manifest signature by the release key, every file's
  SHA-256) before anything touches the directory; a refused bundle leaves it unchanged.
- A bundle is written to a temporary file (0600), fsync'd, renamed into place and the
  directory fsync'd: a power cut leaves either the old set or the new one, never a torn file.
- The directory stays within `max_bytes`: after a put the oldest bundles (by the time they
  were put, the file's mtime; putting a bundle again refreshes it) are removed until it fits.
  A bundle larger than `max_bytes` alone is refused ("too-large").
- Leftover temporary files (a put cut by power) are removed when the cache opens.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from citysense_formats import bundle as fmt
from citysense_formats.durable import replace_file

if TYPE_CHECKING:  # loaded only with [ota] configured (cryptography: ~7 MiB resident)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

_ID = re.compile(r"[0-9a-f]{64}")
_SUFFIX = ".csb"
_TMP = ".tmp"


@dataclass(frozen=True, slots=True)
class CacheEntry:
    id: str
    path: Path
    size: int
    mtime: float


def is_bundle_id(text: str) -> bool:
    return _ID.fullmatch(text) is not None


class BundleCache:
    def __init__(
        self, directory: Path, max_bytes: int, release_pub: Ed25519PublicKey | bytes
    ) -> None:
        if isinstance(release_pub, bytes):
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

            release_pub = Ed25519PublicKey.from_public_bytes(release_pub)
        self.directory = directory
        self.max_bytes = max_bytes
        self._pub = release_pub
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for tmp in directory.glob("*" + _TMP):
            tmp.unlink(missing_ok=True)

    def put(self, data: bytes) -> fmt.Bundle:
        """Verify and store; BundleError (nothing stored) if the bundle is refused."""
        bundle = fmt.verify(data, self._pub)
        if len(data) > self.max_bytes:
            raise fmt.BundleError(
                "too-large", f"bundle of {len(data)} bytes > cache_max_bytes {self.max_bytes}"
            )
        final = self.directory / (bundle.id + _SUFFIX)
        if final.exists() and final.stat().st_size == len(data):
            os.utime(final)
        else:
            self._write(final, data)
        self._evict(keep=bundle.id)
        return bundle

    def _write(self, final: Path, data: bytes) -> None:
        replace_file(final, data, 0o600, tmp=final.with_name(final.name + _TMP))

    def _evict(self, keep: str) -> None:
        entries = self.entries()
        used = sum(e.size for e in entries)
        for e in entries:  # oldest first
            if used <= self.max_bytes:
                break
            if e.id != keep:
                e.path.unlink(missing_ok=True)
                used -= e.size

    def path(self, bundle_id: str) -> Path | None:
        """The cached file of `bundle_id`, or None (also for a string that is no bundle id)."""
        if not is_bundle_id(bundle_id):
            return None
        p = self.directory / (bundle_id + _SUFFIX)
        return p if p.is_file() else None

    def load(self, bundle_id: str) -> fmt.Bundle | None:
        """The cached bundle, verified again (a file damaged on the card is removed)."""
        p = self.path(bundle_id)
        if p is None:
            return None
        try:
            return fmt.verify(p.read_bytes(), self._pub)
        except fmt.BundleError:
            p.unlink(missing_ok=True)
            return None

    def entries(self) -> list[CacheEntry]:
        """The cached bundles, oldest first."""
        out = []
        for p in self.directory.glob("*" + _SUFFIX):
            if not is_bundle_id(p.stem):
                continue
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            out.append(CacheEntry(p.stem, p, st.st_size, st.st_mtime))
        out.sort(key=lambda e: (e.mtime, e.id))
        return out
