"""The node application: sample -> batch -> sign -> buffer -> send, plus commands.

Firmware updates (docs/firmware.md): the `update` COMMAND or an OTA_OFFER starts one;
the transfer (citysense/fetch.py) is imported only while a bundle is being fetched,
and the checks and the staging (citysense/ota.py) run at the next boot before the app,
so the steady state does not carry their code (nor their qstrs: MicroPython never
frees those, and one more qstr pool costs ~7 KiB). The app reports its version in HELLO (key
3; key 9 "trial" while on trial) and as `sys/fw` in the first record of each boot, and
every outcome as `sys/ota` (kept in ota/notes until a record holding it is buffered).
A trial app confirms itself when the gateway ACKs the first record it made.

Tasks (asyncio): `_sampler` (readings every interval, one signed record per `batch`
samples), `_link` (UART <-> the sans-I/O Link core), `_watchdog` (feeds the hardware
WDT only while both other tasks have checked in recently). Without a usable
configuration the node runs the link only: HELLO carries key 8 "problem" and it waits
for provisioning (it reboots itself once the config appears).
"""

import gc
import sys
import time

import asyncio
from citysense import cbor, cose, frame, hal, safe, senml, state
from citysense.buffer import Buffer
from citysense.commands import Commands
from citysense.link import Link
from citysense.state import SeqStore

try:
    from micropython import const
except ImportError:

    def const(x):  # type: ignore[misc]
        return x


VERSION = "0.1.0"
PROTOCOL = const(2)  # HELLO key 1: COMMANDs bound to device, gateway and expiry
_WDT_MS = const(10000)
_STALE_MS = const(8000)  # a task silent this long is unhealthy: stop feeding the WDT
_HELLO_PROBLEM_MS = const(5000)
_READ_CHUNK = const(256)
# A record must fit one RECORD frame (frame.MAX_BODY). Besides the sensors' readings it
# holds the five sys/ readings (<= 105 bytes), the payload map around the pack (<= 27)
# and the COSE_Sign1 around the payload (79 + the kid): 224 + kid bytes reserved.
_RECORD_RESERVE = const(224)
_NOTE_RESERVE = const(96)  # per sys/fw or sys/ota reading (<= 80 chars + labels)
_TRIAL_S = const(300)  # a trial app not confirmed within this much uptime is given up


_FATAL = ("config-missing", "config-corrupt", "config-invalid", "key-missing", "key-corrupt")


class Config:
    """The node's configuration (defaults here, filled by `config.load`). `problem`: why
    the node cannot run (see config.py), reported in HELLO key 8."""

    def __init__(self, default_id):
        self.device_id = default_id
        self.interval_s = 60
        self.batch = 5
        self.link = {"uart": 1, "tx": 17, "rx": 16, "baud": 115200}
        self.sensors = ["bme280", "battery"]
        self.seed = None
        self.operator = None
        self.problem = None

    @property
    def fatal(self):
        return self.problem in _FATAL


def load_config(default_id):
    """Config from the device filesystem; the loader module is dropped afterwards (it is
    needed once per boot and would otherwise hold heap for the node's life)."""
    from citysense import config

    cfg = config.load(Config(default_id))
    forget("config")
    return cfg


def forget(name):
    """Drop module citysense.<name> (needed once per boot) so it stops holding heap."""
    import citysense

    sys.modules.pop("citysense." + name, None)
    try:
        delattr(citysense, name)
    except AttributeError:
        pass


class Node:
    def __init__(self, encoder=None, decoder=None):
        self._ticks = time.ticks_ms()
        self.ms = 0  # ms since boot, not wrapping (ticks_ms does): see now()
        self.reset_cause = hal.reset_cause()
        default_id = "esp32-" + "".join("%02x" % b for b in hal.unique_id())
        self.cfg = load_config(default_id)
        gc.collect()
        self.boot = state.load("boot", 0) + 1
        state.store("boot", self.boot)
        self.buffer = Buffer()
        self.buffer.open()
        self.dropped = state.load("dropped", 0)
        self.seqs = SeqStore(64, floor=self.buffer.newest_seq())
        self.kid = self.cfg.device_id.encode()
        # which app this is (boot.py chose it), and the sys/ readings it owes
        p = _text("ota/boot").split()
        self.trial = len(p) == 4 and p[2] != "-" and p[3] == "1"
        m = _text("apps/%s/.ota" % (p[2] if self.trial else p[0] if p else "-")).split()
        self.version = m[0] if m else VERSION
        self.notes = [("sys/fw", self.version)]
        for n in _text("ota/notes").split("\n"):
            if n and n[-7:] == ": reset":  # boot.py rolled back: what reset the trial
                n += " " + self.reset_cause
            if n and ("sys/ota", n) not in self.notes:
                self.notes.append(("sys/ota", n))
        if self.trial:
            self.notes.append(("sys/ota", "trial " + self.version))
            # the time bound of a trial (`ota/trial_s` overrides it, e.g. in tests)
            self.trial_end = int(_text("ota/trial_s") or _TRIAL_S) * 1000
        self.link = Link(
            self.buffer, self.hello_body, rand=self._rand, encoder=encoder, decoder=decoder
        )
        self.commands = None
        if not self.cfg.fatal:
            self.commands = Commands(
                self.cfg.operator, self.cfg.seed, self.kid, self.apply, self.unix_ms
            )
        self.sensors = []
        self.pack = senml.Pack(base_name=self.cfg.device_id + "/")
        # the readings' bytes one record can take (a batch is sealed early at this size)
        self.pack_budget = frame.MAX_BODY - _RECORD_RESERVE - len(self.kid)
        self.oversize = 0  # records too big for a frame (none if the budget holds)
        self.samples = 0
        self.time_base = senml.TIME_BOOT
        self.sync_now = False
        self.reboot_at = -1
        self.beat_sampler = 0
        self.beat_link = 0
        self.first_seq = -1  # the first seq made this boot (its ACK confirms a trial)
        if not self.cfg.fatal and _text("ota/stage"):
            from citysense import fetch  # a transfer is under way: it goes on (fetch.py)

            self.setup_sensors()  # now, while the heap is in one piece (the sampler would)
            fetch.step(self, 0)

    # ---- firmware updates (slots: citysense/slots.py; the update path: ota.py) ----
    def note(self, text):
        """A sys/ota outcome: kept in ota/notes until a record holding it is buffered."""
        with open("ota/notes", "a") as f:
            f.write(text[:80] + "\n")
        self.notes.append(("sys/ota", text[:80]))

    def _confirm(self):
        """The gateway stored a record of this trial app: it becomes current (the one
        before it previous; an older slot is deleted by the next staging)."""
        p = _text("ota/boot").split()
        self.trial = False
        if len(p) == 4 and p[2] != "-":
            import os

            with open("ota/boot.tmp", "w") as f:
                f.write("%s %s - 0\n" % (p[2], p[0]))
            os.rename("ota/boot.tmp", "ota/boot")
            self.note("confirmed " + self.version)

    def _want(self, bid):
        """Fetch bundle `bid` (hex): named in ota/stage, then a reboot. The transfer runs
        from the start of the next boot, whose heap is not yet cut up (imported later,
        after a COMMAND's verify, it did not always find room in 96 KiB)."""
        if _text("ota/stage") != bid:
            import os

            try:
                os.mkdir("ota")
            except OSError:
                pass
            _remove("ota/new.csb")
            with open("ota/stage", "w") as f:
                f.write(bid)
        self.reboot_at = self.now() + 500  # after the COMMAND_RESULT went out

    def _offer(self, frame_):
        """An OTA_OFFER {1: bundle id, 2: size} while no transfer runs: fetch it, unless
        it was refused before, this app is on trial, or the node is not provisioned."""
        try:
            bid = "".join("%02x" % b for b in cbor.loads(frame_[1])[1])
        except (ValueError, TypeError, KeyError):
            return
        if frame_[0] == 8 and len(bid) == 64 and not self.cfg.fatal and not self.trial:
            if _text("ota/refused") != bid:
                self._want(bid)

    def now(self):
        """Monotonic ms since boot that does not wrap (ticks_ms does)."""
        t = time.ticks_ms()
        self.ms += time.ticks_diff(t, self._ticks)
        self._ticks = t
        return self.ms

    def unix_ms(self):
        """Unix time in ms from the gateway's last TIME, or None before the first one."""
        off = self.link.unix_offset
        return None if off is None else self.now() + off

    def _rand(self):
        return self.ms * 7919 + self.boot

    # ---- HELLO ----
    def hello_body(self):
        m = {
            1: PROTOCOL,
            2: self.cfg.device_id,
            3: self.version,
            4: self.boot,
            5: self.reset_cause,
            6: self.now(),
            7: max(self.seqs.highest, self.buffer.newest_seq()),
        }
        if self.cfg.problem:
            m[8] = self.cfg.problem
        m[9] = "trial" if self.trial else "stable"
        return cbor.dumps(m)

    # ---- commands ----
    def apply(self, action, value):
        if action == "set_interval":
            self.cfg.interval_s = value
            state.store("interval", value)
            return "interval_s=%d" % value
        if action == "set_batch":
            self.cfg.batch = value
            state.store("batch", value)
            return "batch=%d" % value
        if action == "sync_now":
            self.sync_now = True
            return "sampling now"
        if action == "update":
            self._want(value)
            return "staging bundle=" + value[:16]
        if action == "reboot":
            self.reboot_at = self.now() + 500  # after the result went out
            return "rebooting"
        raise ValueError("no handler for " + action)

    # ---- sampling ----
    def setup_sensors(self):
        from citysense import sensors

        self.sensors = sensors.open_all(self.cfg.sensors)

    def sample(self):
        now = self.now()
        base = self.link.unix_offset
        tb = senml.TIME_BOOT if base is None else senml.TIME_UNIX
        if self.samples and tb != self.time_base:
            self.seal()  # one time base per record: close the batch first
        secs = (now if base is None else now + base) // 1000
        if not self.samples:
            self.time_base = tb
            self.pack.clear(base_time=secs)
            self.t0 = secs
        t = secs - self.t0
        start = self.pack.nbytes
        for read_into in self.sensors:
            read_into(self.pack, t)
        self.samples += 1
        # `batch` samples per record at most: sealed earlier when one more sample of
        # this size would not fit the frame (batch 64 would make a ~5 KB record)
        budget = self.pack_budget - _NOTE_RESERVE * len(self.notes)
        full = 2 * self.pack.nbytes - start > budget
        if self.samples >= self.cfg.batch or self.sync_now or full:
            self.sync_now = False
            self.seal()

    def seal(self):
        p = self.pack
        now = self.now()
        gc.collect()
        p.add("sys/heap", hal.free_heap(), "B")
        p.add("sys/uptime", now // 1000, "s")
        p.add("sys/reset", self.reset_cause)
        p.add("sys/linkerr", self.link.errors)
        dropped = self.dropped + self.buffer.dropped
        p.add("sys/dropped", dropped)
        notes = self.notes
        for n in notes:
            p.add(n[0], n[1])
        seq = self.seqs.take()
        if self.first_seq < 0:
            self.first_seq = seq
        try:
            # the payload encoded into the scratch buffer and signed there in place: no
            # block of a record's size (the buffer writes it before the next use)
            payload = cose.room(cbor.scratch())
            senml.record_payload(seq, self.boot, p, self.time_base, payload)
            record = cose.sign_in(self.cfg.seed, self.kid, payload)
        except MemoryError:
            # the heap cut up (a transfer boot has a few KiB to spare): this record is
            # not made, counted in sys/dropped (its seq is a gap the gateway sees), the
            # notes kept for the next one; a crash here would count towards safe mode
            payload = None
            gc.collect()
            self.dropped += 1
            state.store("dropped", self.dropped + self.buffer.dropped)
            hal.event("dropped", seq, 1)
            self.samples = 0
            p.clear()
            return
        before = self.buffer.dropped
        fits = len(record) <= frame.MAX_BODY
        if fits:
            self.buffer.append(seq, record)
        else:
            # cannot happen within pack_budget; if it did, the record could never be
            # sent: drop it, counted, rather than wedge the link behind it
            self.oversize += 1
            self.dropped += 1
        lost = self.buffer.dropped - before + (0 if fits else 1)
        if lost:
            state.store("dropped", self.dropped + self.buffer.dropped)
            hal.event("dropped", -1, lost)
        if fits:
            hal.event("record", seq, len(p))
            self.notes = []
            if len(notes) > 1 or notes and notes[0][0] != "sys/fw":
                _remove("ota/notes")
        self.samples = 0
        p.clear()

    async def sampler(self):
        # a boot that fetches a bundle samples too (its sensors were opened with fetch)
        if not self.sensors:
            self.setup_sensors()
        while True:
            start = self.now()
            self.beat_sampler = start
            self.sample()
            while self.now() - start < self.cfg.interval_s * 1000 and not self.sync_now:
                self.beat_sampler = self.now()
                await asyncio.sleep_ms(200)

    # ---- link ----
    async def run_link(self):
        lc = self.cfg.link
        uart = hal.uart(lc["uart"], lc["tx"], lc["rx"], lc["baud"])
        buf = bytearray(_READ_CHUNK)
        link = self.link
        last_hello = 0
        while True:
            now = self.now()
            self.beat_link = now
            n = uart.readinto(buf)
            if n:
                link.receive(buf, now, n)  # in place: no copy of every read
                if link.time_set:
                    link.time_set = False
                    hal.set_time(now + link.unix_offset)
            if self.cfg.fatal and now - last_hello >= _HELLO_PROBLEM_MS:
                link.hello_due = True
                last_hello = now
            while link.commands:
                body = link.commands.pop(0)
                if self.commands is not None:
                    link.send_result(self.commands.handle(body))
            while True:
                out = link.poll(now)
                if out is None:
                    break
                uart.write(out)
            f = sys.modules.get("citysense.fetch")
            if f and (link.ota_in or f.bundle):
                f.step(self, now)
            while link.ota_in and not f:
                self._offer(link.ota_in.pop(0))
            while link.ack_events:
                seq = link.ack_events.pop(0)
                hal.event("ack", seq)
                if self.trial and 0 <= self.first_seq <= seq:
                    self._confirm()
            if self.reboot_at >= 0 and now >= self.reboot_at:
                hal.reset()
            await asyncio.sleep_ms(5 if n else 20)

    async def watchdog(self):
        wdt = hal.wdt(_WDT_MS)
        healthy_done = False
        while True:
            now = self.now()
            ok = now - self.beat_link < _STALE_MS
            if not self.cfg.fatal:
                ok = ok and now - self.beat_sampler < _STALE_MS
            if self.trial and now > self.trial_end:  # not confirmed in time: roll back
                _give_up("unconfirmed after %d s" % (self.trial_end // 1000))
            if ok:
                wdt.feed()
                if not healthy_done and now >= safe.HEALTHY_MS:
                    safe.healthy()
                    healthy_done = True
            await asyncio.sleep_ms(1000)

    async def wait_for_config(self):
        while True:
            await asyncio.sleep_ms(2000)
            self.beat_sampler = self.now()
            cfg = load_config(self.cfg.device_id)
            self.cfg.problem = cfg.problem  # what the next HELLO reports
            if not cfg.fatal:
                hal.reset()  # provisioned: start again with the new config


def _text(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _give_up(why):
    """A trial that cannot be confirmed: say why (boot.py rolls back) and reset."""
    with open("ota/why", "w") as f:
        f.write(why)
    hal.reset()


def _remove(path):
    import os

    try:
        os.remove(path)
    except OSError:
        pass


def _on_error(loop, context):
    # a task died: log it; the watchdog stops being fed and resets the node
    print(
        "citysense: task error:", context.get("message"), context.get("exception"), file=sys.stderr
    )


async def main(node=None, encoder=None, decoder=None):
    node = node or Node(encoder, decoder)
    asyncio.get_event_loop().set_exception_handler(_on_error)
    tasks = [asyncio.create_task(node.run_link()), asyncio.create_task(node.watchdog())]
    if node.cfg.fatal:
        print("citysense: waiting for provisioning:", node.cfg.problem, file=sys.stderr)
        tasks.append(asyncio.create_task(node.wait_for_config()))
    else:
        tasks.append(asyncio.create_task(node.sampler()))
    # the tasks run forever; a task that raises ends main (the link task) or stops its
    # heartbeat (the others) and the WDT resets the node. Awaiting them one by one
    # instead of asyncio.gather() keeps asyncio.funcs (~0.8 KiB of heap) unloaded.
    for t in tasks:
        await t
