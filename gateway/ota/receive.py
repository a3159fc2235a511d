"""Firmware bundles from the broker into the gateway's bundle cache, with a report.

`citysense-cloud release publish` puts a bundle, retained, on `citysense/v1/ota` (every
gateway) or `citysense/v1/<gw>/ota` (this one) (citysense_formats.ota_topics). Here a
gateway with `[ota] release_key` set:
- subscribes to both (QoS 1); a refused SUBACK (the broker ACL) is logged, the session
  goes on; without a release key it does not subscribe;
- hands each message's bytes to `BundleCache.put` (gateway/ota/cache.py) in a thread: it
  verifies the manifest signature and every file's hash, stores the bundle atomically
  within `cache_max_bytes`, or refuses it (BundleError) leaving the cache as it was;
- publishes one report per bundle on `citysense/v1/<gw>/ota-report` (QoS 1, not retained):
  accepted, or refused with the BundleError reason; counted in
  `citysense_ota_bundles_total{outcome}`. An empty message (a cleared retained topic) is
  ignored. A bundle the cache already holds is accepted again (and reported again), so a
  publisher always gets an answer.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from citysense_formats import bundle as fmt
from citysense_formats import ota_topics

from ..logsafe import esc
from ..metrics import Metrics
from ..mqttclient import MqttError
from .cache import BundleCache

log = logging.getLogger("citysense.ota.receive")

REPORT_WAIT_S = 10.0


class BundleReceiver:
    def __init__(self, gateway_id: str, cache: BundleCache, metrics: Metrics) -> None:
        self.gw = gateway_id
        self.cache = cache
        self.metrics = metrics
        self._lock = asyncio.Lock()  # one put at a time: eviction sees the whole directory

    def topics(self) -> tuple[str, str]:
        return ota_topics.bundle_topic(None), ota_topics.bundle_topic(self.gw)

    def handles(self, topic: str) -> bool:
        return topic in self.topics()

    async def subscribe(self, client: Any) -> None:
        for topic in self.topics():
            codes = await client.subscribe(topic, qos=1)
            refused = [c for c in codes if c >= 0x80]
            if refused:
                log.warning(
                    "event=ota-subscribe-refused topic=%s code=%s: the broker ACL must let"
                    " this gateway read it",
                    topic,
                    refused[0],
                )

    def accept(self, data: bytes) -> ota_topics.Report:
        """Verify and cache `data`; the report either way (runs in a thread)."""
        try:
            b = self.cache.put(data)
        except fmt.BundleError as exc:
            return self._refused(data, exc.reason, str(exc))
        except OSError as exc:
            return self._refused(data, "write-failed", f"cannot write the cache ({exc.strerror})")
        return ota_topics.Report(self.gw, b.id, b.version, b.seq, "accepted", None, "cached")

    def _refused(self, data: bytes, reason: str, detail: str) -> ota_topics.Report:
        try:
            bid: str | None = fmt.bundle_id(data)
        except fmt.BundleError:
            bid = None
        try:
            head = fmt.parse(data)
            version, seq = head.version, head.seq
        except fmt.BundleError:
            version, seq = None, None
        return ota_topics.Report(self.gw, bid, version, seq, "refused", reason, detail[:200])

    async def receive(self, client: Any, payload: object) -> ota_topics.Report | None:
        """One message from a bundle topic: cache it, count it, report it."""
        if not isinstance(payload, bytes | bytearray) or not payload:
            return None  # a cleared retained message
        async with self._lock:
            report = await asyncio.to_thread(self.accept, bytes(payload))
        outcome = report.status if report.reason is None else report.reason
        self.metrics.ota_bundles[outcome] += 1
        level = logging.INFO if report.status == "accepted" else logging.WARNING
        log.log(
            level,
            "event=ota-bundle outcome=%s bundle=%s version=%s seq=%s bytes=%d detail=%s",
            outcome,
            (report.bundle or "-")[:16],
            esc(report.version or "-"),
            report.seq,
            len(payload),
            esc(report.detail, 200),
        )
        await self._report(client, report)
        return report

    async def _report(self, client: Any, report: ota_topics.Report) -> None:
        topic = ota_topics.report_topic(self.gw)
        try:
            code = await client.publish_acked(topic, report.encode(), wait_s=REPORT_WAIT_S)
        except MqttError as exc:  # the session dropped; the bundle is cached anyway
            log.warning("event=ota-report-failed topic=%s error=%r", topic, str(exc))
            return
        if int(code) >= 0x80:
            log.warning(
                "event=ota-report-refused topic=%s code=0x%02x: the broker ACL must let this"
                " gateway write it",
                topic,
                int(code),
            )
