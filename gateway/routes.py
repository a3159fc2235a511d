"""Which port reaches which device, and when a device's boot started: changed only on proof.

The serial line is unauthenticated, so a HELLO proves nothing: anyone on any port can
send one naming any device. A HELLO therefore only files a *claim* (boot count, uptime,
firmware) for (device, port). The claim takes effect, moving the device's route (where
its COMMANDs go) and its boot clock (how its boot-relative SenML times are resolved),
when a *new* verified record of that device arrives on the same port: a record with a
seq above everything stored, signed by the device's active key, which nobody but the
device can make. A replayed old record proves nothing either (it is not new), so it
moves nothing. A record's boot count must match the claim's for the boot clock to apply.

Rules (state -> what happens):
- HELLO from an id not in the registry (or revoked): no state at all; counted per port.
- HELLO from a registered id: claim (device, port) replaces that pair's older claim; at
  most MAX_CLAIMS_PER_PORT claims per port (the oldest goes first), each expires after
  CLAIM_TTL seconds.
- New verified record on port P: route := P; if a claim for (device, P) has the record's
  boot count, the boot clock := that claim's; the claim is consumed.
- Port closed: routes through it are cleared, its claims dropped.

Pure: time comes in as arguments; no asyncio, no I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final, Protocol

MAX_CLAIMS_PER_PORT: Final = 64
CLAIM_TTL: Final = 600.0


class Link(Protocol):
    """Where a frame came from and where its answer goes (a serial port)."""

    name: str

    def send(self, data: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class Claim:
    """What an unproven HELLO said."""

    boot: int
    protocol: int  # HELLO key 1
    boot_start: float  # Unix seconds on the gateway's clock: receive time - uptime
    firmware: str
    reset_cause: str
    at: float  # monotonic time of the HELLO
    trial: bool = False  # HELLO key 9: an updated app not yet confirmed


@dataclass(slots=True)
class Device:
    """A registered device the gateway has heard from (what `status` shows)."""

    link: Link | None = None  # where its COMMANDs go now; None while that port is closed
    port: str | None = None  # the port it was last proven on (kept when the port closes)
    last_seen: float = 0.0
    last_seq: int | None = None
    boot: int | None = None
    boot_start: float | None = None
    firmware: str | None = None
    reset_cause: str | None = None
    protocol: int | None = None  # HELLO key 1 (None: no proven HELLO since the start)
    trial: bool | None = None  # HELLO key 9 (None: no proven HELLO since the start)
    rejects: dict[str, int] = field(default_factory=dict)


class Routes:
    def __init__(self) -> None:
        self.devices: dict[str, Device] = {}
        self._claims: dict[str, OrderedDict[str, Claim]] = {}  # port -> device -> claim

    def device(self, device_id: str) -> Device:
        dev = self.devices.get(device_id)
        if dev is None:
            dev = self.devices[device_id] = Device()
        return dev

    def link_of(self, device_id: str) -> Link | None:
        dev = self.devices.get(device_id)
        return None if dev is None else dev.link

    def links(self) -> list[Link]:
        """Every port that routes at least one device, once each."""
        seen: dict[int, Link] = {}
        for dev in self.devices.values():
            if dev.link is not None:
                seen.setdefault(id(dev.link), dev.link)
        return list(seen.values())

    def claim(self, device_id: str, port: str, claim: Claim) -> None:
        claims = self._claims.setdefault(port, OrderedDict())
        claims.pop(device_id, None)
        claims[device_id] = claim
        while len(claims) > MAX_CLAIMS_PER_PORT:
            claims.popitem(last=False)

    def claims_on(self, port: str) -> int:
        return len(self._claims.get(port, ()))

    def prove(self, device_id: str, link: Link, boot: int, now: float, mono: float) -> Device:
        """A new verified record of `device_id` arrived on `link`: route and clock follow."""
        dev = self.device(device_id)
        dev.link = link
        dev.port = link.name
        dev.last_seen = now
        claims = self._claims.get(link.name)
        claim = None if claims is None else claims.pop(device_id, None)
        if claim is not None and claim.boot == boot and mono - claim.at <= CLAIM_TTL:
            dev.boot = claim.boot
            dev.boot_start = claim.boot_start
            dev.firmware = claim.firmware
            dev.reset_cause = claim.reset_cause
            dev.protocol = claim.protocol
            dev.trial = claim.trial
        return dev

    def seen(self, device_id: str, now: float) -> None:
        """A verified but not new record (a duplicate): last seen moves, nothing else."""
        dev = self.devices.get(device_id)
        if dev is not None:
            dev.last_seen = now

    def port_closed(self, link: Link) -> None:
        self._claims.pop(link.name, None)
        for dev in self.devices.values():
            if dev.link is link:
                dev.link = None
