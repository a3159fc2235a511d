"""Registry sync on a gateway: how long one REGISTRY_UPDATE of N entries takes to apply.

    python bench/bench_registry_sync.py [ENTRIES]

Prints, for one update of ENTRIES registry entries (default 10,000, ~300 bytes each):
- decode: verify the operator signature and decode strictly (every entry parsed);
- first apply: decode + write every file (temp, fsync, rename) + the state file;
- revoke one: the next version with one entry changed (only that file is rewritten);
- baseline, measured in the same run on the same filesystem: writing the same ENTRIES
  files with plain write + fsync + rename and nothing else (what the apply cannot beat).
The gateway applies an update in a worker thread, so the figures are the time the
uplink's message loop waits, not a stall of the serial pipeline.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from citysense_formats import registry_entry  # noqa: E402
from gateway.metrics import Metrics  # noqa: E402
from gateway.protocol.registry_update import (  # noqa: E402
    ALL_GATEWAYS,
    RegistryUpdate,
    decode_update,
    sign_update,
)
from gateway.registry_sync import RegistrySync  # noqa: E402

SEED = bytes(range(100, 132))


def entries(n: int, revoked: int = -1) -> dict[str, bytes]:
    out = {}
    for i in range(n):
        device = f"node-{i:06d}"
        obj = {
            "device_id": device,
            "public_key": os.urandom(32).hex() if i == 0 else f"{i:064x}",
            "status": "revoked" if i == revoked else "active",
            "enrolled_at": "2026-11-25T05:00:00Z",
            "seq_floor": 1764046800000,
            "firmware_sha256": f"{i:064x}",
        }
        out[device] = registry_entry.encode(obj)
    return out


def baseline(d: Path, files: dict[str, bytes]) -> float:
    t = time.perf_counter()
    for device, body in files.items():
        tmp = d / f".{device}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, body)
        os.fsync(fd)
        os.close(fd)
        os.replace(tmp, d / f"{device}.json")
    return time.perf_counter() - t


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    public = Ed25519PrivateKey.from_private_bytes(SEED).public_key().public_bytes_raw()
    first = entries(n)
    body1 = sign_update(SEED, RegistryUpdate(1, ALL_GATEWAYS, first, 0))
    body2 = sign_update(SEED, RegistryUpdate(2, ALL_GATEWAYS, {**first, **entries(2, 1)}, 0))
    with tempfile.TemporaryDirectory(dir=REPO) as tmp:
        d = Path(tmp)
        (d / "base").mkdir()
        base = baseline(d / "base", first)
        t = time.perf_counter()
        decode_update(public, body1)
        decode = time.perf_counter() - t
        sync = RegistrySync("gw-bench", d / "registry", d, Metrics(), public)
        t = time.perf_counter()
        assert sync.apply(body1) == "applied"
        apply1 = time.perf_counter() - t
        t = time.perf_counter()
        assert sync.apply(body2) == "applied"
        apply2 = time.perf_counter() - t
    print(f"registry update: {n} entries, {len(body1)} bytes")
    print(f"  decode + verify      {decode * 1000:9.1f} ms")
    print(f"  first apply          {apply1 * 1000:9.1f} ms  ({n / apply1:,.0f} entries/s)")
    print(f"  revoke one (next v.) {apply2 * 1000:9.1f} ms")
    print(f"  baseline: {n} plain write+fsync+rename {base * 1000:9.1f} ms  (ratio first"
          f" apply / baseline {apply1 / base:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
