"""The gateway's counters and gauges, exposed in the Prometheus text format by prometheus-client.

Counting stays plain Python on the hot path: `metrics.accepted += n`,
`metrics.rejected[reason] += 1`. A counter is declared by one line in `Metrics` (a family
descriptor naming the metric), and a private `CollectorRegistry` reads every declared
family when /metrics is scraped. Nothing is registered in prometheus-client's global
registry, so several `Metrics` (tests, two agents in one process) never collide.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any, overload

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))


class _Family:
    """A metric declared on `Metrics`; the value lives in the instance's own __dict__."""

    kind = "counter"

    def __init__(self, name: str, help_: str) -> None:
        self.name = name
        self.help = help_
        self.attr = ""

    def __set_name__(self, owner: type, attr: str) -> None:
        self.attr = attr

    def family(self, value: Any) -> Metric:
        cls = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        return cls(self.name, self.help, value=value)


class Count(_Family):
    """`metrics.x += n`: an int counter (no __set__, so after the first write the attribute
    is an ordinary instance attribute and costs nothing to update)."""

    @overload
    def __get__(self, obj: None, owner: type) -> Count: ...
    @overload
    def __get__(self, obj: object, owner: type) -> int: ...
    def __get__(self, obj: object | None, owner: type) -> Count | int:
        return self if obj is None else 0


class Level(Count):
    """`metrics.x = v`: a gauge set by the code (e.g. 1 while connected)."""

    kind = "gauge"


class ByLabel(_Family):
    """`metrics.x[label] += 1`: a counter family with one label."""

    def __init__(self, name: str, label: str, help_: str) -> None:
        super().__init__(name, help_)
        self.label = label

    @overload
    def __get__(self, obj: None, owner: type) -> ByLabel: ...
    @overload
    def __get__(self, obj: object, owner: type) -> defaultdict[str, int]: ...
    def __get__(self, obj: object | None, owner: type) -> ByLabel | defaultdict[str, int]:
        if obj is None:
            return self
        value: defaultdict[str, int] = defaultdict(int)
        obj.__dict__[self.attr] = value
        return value

    def family(self, value: Any) -> Metric:
        fam = CounterMetricFamily(self.name, self.help, labels=[self.label])
        for key, n in sorted(dict(value).items()):
            fam.add_metric([key], n)
        return fam


class Metrics:
    """Every metric of the gateway. To add one, add one line here (a Count, Level or
    ByLabel with its Prometheus name); it is exported and shown on the status page."""

    frames = ByLabel("citysense_frames_total", "type", "Frames decoded from serial, by type.")
    frame_errors = ByLabel(
        "citysense_frame_errors_total", "reason", "Bad frames dropped, by reason."
    )
    hello_errors = ByLabel(
        "citysense_hello_errors_total", "reason", "HELLO frames with a bad body."
    )
    accepted = Count("citysense_records_accepted_total", "Records stored and ACKed.")
    duplicates = Count("citysense_records_duplicate_total", "Duplicates ACKed again.")
    rejected = ByLabel("citysense_records_rejected_total", "reason", "Records NACKed, by reason.")
    published = Count("citysense_records_published_total", "Records PUBACKed by the broker.")
    publish_errors = Count(
        "citysense_publish_errors_total", "Publishes that failed (MQTT error or no PUBACK)."
    )
    commands = ByLabel("citysense_commands_total", "outcome", "Downlink commands, by outcome.")
    registry_updates = ByLabel("citysense_registry_updates_total", "outcome", "Registry updates.")
    ota_bundles = ByLabel(
        "citysense_ota_bundles_total", "outcome", "Bundles from the broker: accepted or why not."
    )
    queue_corrupt = Count("citysense_queue_corrupt_total", "Corrupt databases moved aside.")
    uplink_connected = Level("citysense_uplink_connected", "1 while connected to the broker.")
    publish_refused = ByLabel(
        "citysense_publish_refused_total",
        "reason",
        "Publishes refused (PUBACK reason >= 0x80, or the client would not send), by reason.",
    )
    disk_written = Count(
        "citysense_disk_written_bytes_total",
        "Bytes the agent made the kernel write to storage (/proc/self/io), the SD card's wear.",
    )
    task_failures = ByLabel(
        "citysense_task_failures_total", "task", "Unexpected exceptions, by task."
    )

    def __init__(self) -> None:
        self.latency_buckets = [0] * len(_BUCKETS)
        self.latency_sum = 0.0
        self.latency_count = 0
        self.gauges: dict[str, Callable[[], float]] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)  # a prometheus-client custom collector: collect()

    def observe_publish(self, seconds: float) -> None:
        for i, bound in enumerate(_BUCKETS):
            if seconds <= bound:
                self.latency_buckets[i] += 1
        self.latency_sum += seconds
        self.latency_count += 1

    @classmethod
    def declared(cls) -> list[_Family]:
        """Every family declared on the class (and subclasses), in declaration order."""
        out: list[_Family] = []
        for klass in reversed(cls.__mro__):
            out.extend(v for v in vars(klass).values() if isinstance(v, _Family))
        return out

    def values(self) -> dict[str, int | dict[str, int]]:
        """Current values by attribute name (labelled ones as {label: n}), for the page."""
        out: dict[str, int | dict[str, int]] = {}
        for fam in self.declared():
            value = getattr(self, fam.attr)
            out[fam.attr] = dict(value) if isinstance(fam, ByLabel) else int(value)
        return out

    def collect(self) -> Iterator[Metric]:
        for fam in self.declared():
            yield fam.family(getattr(self, fam.attr))
        for name, fn in sorted(self.gauges.items()):
            yield GaugeMetricFamily(name, name.replace("_", " "), value=fn())
        buckets = [  # latency_buckets are cumulative already, as the exposition wants
            ("+Inf" if bound == float("inf") else f"{bound:g}", float(count))
            for bound, count in zip(_BUCKETS, self.latency_buckets, strict=True)
        ]
        yield HistogramMetricFamily(
            "citysense_publish_latency_seconds",
            "Queue insert to PUBACK.",
            buckets=buckets,
            sum_value=self.latency_sum,
        )

    def render(self) -> str:
        """The Prometheus text exposition (format 0.0.4)."""
        return generate_latest(self.registry).decode()
