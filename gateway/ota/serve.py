"""The gateway's side of a firmware transfer: answer OTA_GETs from the bundle cache, and
offer bundles to devices (`citysense-gateway ota push`).

- An OTA_GET names a bundle by id and an offset; the answer is an OTA_CHUNK with up to
  CHUNK_MAX bytes from the cached file, or a refusal (unknown-bundle: the cache lacks
  it; no-release-key: this gateway has no [ota] release_key, so it caches nothing).
  The gateway keeps no transfer state: the node's offset is the state, so a gateway
  restart or a line cut loses nothing.
- The line is unauthenticated and a GET costs a disk read and ~1 KiB written, so GETs
  are bounded per port by a token bucket (GET_RATE a second); beyond it they are dropped
  unread, counted (a node asks again after 2 s). The bytes are signed: serving them to
  anyone who asks gives nothing away that the release does not.
- Offers: `offer(device, id)` remembers that `device` should fetch bundle `id` (in
  `<cache_dir>/offers.json`, so an offer survives a restart) and the gateway sends an
  OTA_OFFER to that device after each of its HELLOs, until the device says (HELLO key 3,
  not on trial) that it runs the bundle's version, or the offer is replaced. An offer is
  a hint, not a command: the node installs only what the release key signed, with a
  release seq above its own.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Final

from ..config import Config
from ..logsafe import esc
from ..protocol.ota import (
    CHUNK_MAX,
    OtaReason,
    decode_ota_get,
    encode_ota_chunk,
    encode_ota_offer,
    encode_ota_refusal,
)
from .cache import BundleCache

log = logging.getLogger("citysense.ota")

GET_RATE: Final = 40.0
"""OTA_GETs answered per second per port (a node at 115200 baud needs ~12)."""
GET_BURST: Final = 40.0
OFFERS: Final = "offers.json"
TRANSFER_FRESH_S: Final = 10.0
"""A port whose last OTA_GET is older than this is no longer shown as transferring."""


class _Bucket:
    def __init__(self) -> None:
        self.tokens = GET_BURST
        self.at = time.monotonic()

    def take(self, now: float) -> bool:
        self.tokens = min(GET_BURST, self.tokens + (now - self.at) * GET_RATE)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class OtaServer:
    def __init__(self, cache: BundleCache | None) -> None:
        self.cache = cache
        self._offers_path = cache.directory / OFFERS if cache is not None else None
        self.offers: dict[str, dict[str, object]] = self._load_offers()
        self._buckets: dict[str, _Bucket] = {}
        self.counts: dict[str, int] = {"chunks": 0, "bytes": 0, "refused": 0, "limited": 0}
        self._served: dict[str, tuple[str, int, int, float]] = {}  # port -> id, end, size, at

    # -- chunks ------------------------------------------------------------------------
    def answer(self, port: str, body: bytes) -> bytes | None:
        """The OTA_CHUNK body answering an OTA_GET, or None (rate-limited: dropped).
        Raises gateway.protocol.ProtocolError for a malformed GET."""
        bucket = self._buckets.setdefault(port, _Bucket())
        if not bucket.take(time.monotonic()):
            self.counts["limited"] += 1
            return None
        get = decode_ota_get(body)
        bid = get.bundle_id.hex()
        if self.cache is None:
            return self._refuse(get.bundle_id, get.offset, OtaReason.NO_RELEASE_KEY)
        path = self.cache.path(bid)
        if path is None:
            return self._refuse(get.bundle_id, get.offset, OtaReason.UNKNOWN_BUNDLE)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(get.offset)
                data = f.read(min(get.length, CHUNK_MAX))
        except OSError as exc:
            log.warning("event=ota-read-failed bundle=%s error=%s", bid[:16], exc)
            return self._refuse(get.bundle_id, get.offset, OtaReason.READ_ERROR)
        self.counts["chunks"] += 1
        self.counts["bytes"] += len(data)
        self._served[port] = (bid, get.offset + len(data), size, time.monotonic())
        return encode_ota_chunk(get.bundle_id, get.offset, data)

    def transfer(self, port: str | None) -> dict[str, object] | None:
        """The transfer going on over `port` (the last chunk served there, if recent):
        {"bundle": id16, "offset": bytes the node has asked for so far, "size": n}."""
        served = self._served.get(port) if port is not None else None
        if served is None or time.monotonic() - served[3] > TRANSFER_FRESH_S:
            return None
        return {"bundle": served[0][:16], "offset": served[1], "size": served[2]}

    def _refuse(self, bid: bytes, offset: int, reason: str) -> bytes:
        self.counts["refused"] += 1
        log.warning("event=ota-get-refused bundle=%s reason=%s", bid.hex()[:16], reason)
        return encode_ota_refusal(bid, offset, reason)

    # -- offers ------------------------------------------------------------------------
    def offer(self, device: str, bundle_id: str) -> dict[str, object]:
        """Offer cached bundle `bundle_id` to `device` from now on; what was offered."""
        if self.cache is None:
            raise ValueError("this gateway has no [ota] release_key: it caches no bundle")
        b = self.cache.load(bundle_id)
        if b is None:
            raise ValueError(f"bundle {bundle_id[:16]} is not in the cache")
        entry: dict[str, object] = {"bundle": b.id, "version": b.version, "size": b.size}
        before = self.offers.get(device)
        self.offers[device] = entry
        try:
            self._save_offers()
        except OSError as exc:  # e.g. a full disk: not offered, and the operator told why
            if before is None:
                del self.offers[device]
            else:
                self.offers[device] = before
            raise ValueError(f"cannot save the offer in {self._offers_path}: {exc}") from None
        log.info(
            "event=ota-offer device=%s bundle=%s version=%s",
            esc(device),
            b.short_id,
            esc(b.version),
        )
        return entry

    def offer_frame(self, device: str, firmware: str, trial: bool) -> bytes | None:
        """The OTA_OFFER body for a device that just said HELLO, or None. A device that
        runs the offered version has it (none is sent); once not on trial the offer is
        done."""
        entry = self.offers.get(device)
        if entry is None:
            return None
        if firmware == entry["version"]:  # it runs it: on trial (wait) or for good (done)
            if not trial:
                del self.offers[device]
                try:
                    self._save_offers()
                except OSError as exc:  # done all the same; after a restart it is done again
                    log.warning("event=ota-offers-save-failed path=%s error=%s",
                                self._offers_path, exc)  # fmt: skip
                log.info("event=ota-offer-done device=%s version=%s", esc(device), esc(firmware))
            return None
        return encode_ota_offer(bytes.fromhex(str(entry["bundle"])), int(str(entry["size"])))

    def _load_offers(self) -> dict[str, dict[str, object]]:
        if self._offers_path is None:
            return {}
        try:
            data = json.loads(self._offers_path.read_text())
        except (OSError, ValueError):
            return {}
        return (
            {str(k): v for k, v in data.items() if isinstance(v, dict)}
            if isinstance(data, dict)
            else {}
        )

    def _save_offers(self) -> None:
        if self._offers_path is None:
            return
        tmp = self._offers_path.with_name(OFFERS + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(self.offers, sort_keys=True))
            f.flush()
            os.fsync(f.fileno())  # `ota push` said "offered": a power cut must not undo it
        os.replace(tmp, self._offers_path)


def open_cache(cfg: Config) -> BundleCache | None:
    """The bundle cache the config describes, or None without [ota] release_key."""
    ota = cfg.ota
    if ota.release_key is None:
        return None
    return BundleCache(cfg.ota_cache_dir, ota.cache_max_bytes, ota.release_key)
