"""The node's side of the serial link, sans-I/O: no UART, no asyncio, no clock.

    link = Link(buffer, hello_body)      # hello_body(): the HELLO map as CBOR bytes
    link.receive(data, now_ms)           # bytes read from the UART
    out = link.poll(now_ms)              # next wire frame to write, or None
    link.ack_events / link.commands      # what happened, for the app

Rules (state -> what is sent next):
- HELLO first after start, and again after every retransmit timeout (the gateway may
  have restarted or the line may have been unplugged: a reconnect).
- Records go out in seq order while fewer than `window` are unacknowledged. The window
  is 1 (stop-and-wait): an ACK is cumulative and seqs may have gaps, so with a record
  N+1 in flight behind N, a lost N (line noise, a gateway restart) would be covered by
  the ACK of N+1 and deleted unsent. One record per round trip is ample for sensors.
- ACK n: cumulative, the buffer deletes every entry with seq <= n, timers reset, but
  only if n <= the highest seq this link has sent since boot (`sent_high`). The line is
  unauthenticated: an ACK above it covers records never sent (a forged ACK(2^64-1)
  would empty the buffer), so it is ignored and counted (`bad_acks`, in sys/linkerr).
  Records are sent in seq order, so every buffered seq <= sent_high has been sent.
- NACK busy: stop sending records for a backoff (exponential, jittered), then resend
  from the NACKed seq. NACK replay: the gateway refuses that seq for good (it holds a
  higher one of this device): treated as an ACK of it so the link moves on, and counted
  as a link error (sys/linkerr). With seqs floored at enrollment a genuine node should
  not meet it (a replaced node's seqs start above its predecessor's), so a count here
  means records were lost. NACK unknown-device / revoked / bad-signature / malformed:
  the record is KEPT (only an ACK deletes), counted as a link error, and sending backs
  off like busy but from a longer floor (an operator has to act; the node keeps
  buffering).
- No ACK progress for `rto` ms with records in flight: go back to the oldest unacked
  record and resend (go-back-N); rto doubles up to `max_rto`, with jitter.
- TIME t: `unix_offset` is set so that unix_ms = now_ms + unix_offset (the app switches
  records to time base 0 and sets the RTC).
- OTA (docs/protocol.md section 10): OTA_OFFER and OTA_CHUNK frames are queued in
  `ota_in` for the app's update path (at most 2; more are dropped, counted in
  dropped_commands); the app puts the next OTA_GET body in `ota_get`, sent only when
  nothing else is due (HELLO, results, records go first: telemetry keeps priority).
- Line noise: bad frames are dropped by the decoder (counted) and decoding resyncs at the
  next 0x00 delimiter.
"""

from citysense import cbor, frame
from citysense.errors import ProtocolError

try:
    from micropython import const
except ImportError:

    def const(x):  # type: ignore[misc]
        return x


_MAX_COMMANDS = const(4)
_MAX_RESULTS = const(4)
_MAX_OTA_IN = const(2)
_OTA_OFFER = const(0x08)  # frame.py: the firmware-transfer frame types
_OTA_GET = const(0x09)
_OTA_CHUNK = const(0x0A)
_ERROR_BACKOFF_MS = const(30000)
_NO_TIME = const(-1)


class Link:
    def __init__(
        self,
        buffer,
        hello_body,
        window=1,
        rto=2000,
        max_rto=60000,
        busy_backoff=1000,
        max_backoff=60000,
        rand=None,
        encoder=None,
        decoder=None,
    ):
        self.buffer = buffer
        self.hello_body = hello_body
        self.window = window
        self.rto_base = rto
        self.rto = rto
        self.max_rto = max_rto
        self.busy_base = busy_backoff
        self.busy = busy_backoff
        self.error_backoff = _ERROR_BACKOFF_MS
        self.max_backoff = max_backoff
        self._rand = rand
        # the frame buffers are ~3 KB: main.py allocates them first, before imports
        # fragment the heap, and passes them in
        self.decoder = decoder or frame.Decoder()
        self.encoder = encoder or frame.Encoder()
        self.next_seq = 0  # seq of the next record to send (0: from the oldest)
        self.sent_high = -1  # highest seq sent since boot: no ACK may go above it
        self.deadline = _NO_TIME  # retransmit timer
        self.hold_until = _NO_TIME  # no records before this (NACK back-off)
        self.hello_due = True
        self.results = []  # signed COMMAND_RESULT bodies waiting to go out
        self.commands = []  # COMMAND bodies received, for the app
        self.ack_events = []  # seqs of ACKs that deleted records (for the emulator trace)
        self.unix_offset = None  # set by TIME
        self.time_set = False  # a TIME arrived since the app last looked (it sets the RTC)
        self.nack_errors = 0
        self.bad_acks = 0
        self.retransmits = 0
        self.dropped_commands = 0
        self.last_rx = _NO_TIME
        self.ota_in = []  # (ftype, body) of OTA_OFFER / OTA_CHUNK, for the app
        self.ota_get = None  # the OTA_GET body to send when the line is free

    @property
    def errors(self):
        """Link errors for sys/linkerr: bad frames + error NACKs + ACKs above what was
        sent + retransmit timeouts."""
        return self.decoder.errors + self.nack_errors + self.bad_acks + self.retransmits

    def _jitter(self, ms):
        r = self._rand() if self._rand else 0
        return ms + (ms * (r % 256)) // 1024  # up to +25 %

    # ---- input ----
    def receive(self, data, now, n=-1):
        """Bytes read from the UART: `data`, or the first `n` of it (read in place)."""
        self.decoder.feed(data, n)
        while True:
            try:
                item = self.decoder.next_frame()
            except ProtocolError:
                continue  # counted in decoder.errors; resync at the next 0x00
            if item is None:
                return
            self.last_rx = now
            try:
                self._handle(item[0], item[1], now)
            except (ValueError, TypeError, KeyError):
                self.nack_errors += 1  # a malformed body from the gateway

    def _handle(self, ftype, body, now):
        if ftype == frame.ACK:
            self._ack(cbor.loads(body)[1], now)
        elif ftype == frame.NACK:
            m = cbor.loads(body)
            self._nack(m[1], m[2], now)
        elif ftype == frame.TIME:
            self.unix_offset = cbor.loads(body)[1] - now
            self.time_set = True
        elif ftype == frame.COMMAND:
            if len(self.commands) < _MAX_COMMANDS:
                self.commands.append(body)
            else:
                self.dropped_commands += 1
        elif ftype == _OTA_CHUNK or ftype == _OTA_OFFER:
            if len(self.ota_in) < _MAX_OTA_IN:
                self.ota_in.append((ftype, body))
            else:
                self.dropped_commands += 1
        else:
            self.nack_errors += 1  # a node-bound frame type from the gateway side

    def _ack(self, seq, now):
        if not isinstance(seq, int) or seq < 0:
            raise ValueError("bad ACK")
        if seq > self.sent_high:
            self.bad_acks += 1  # covers records never sent: forged or stale, not trusted
            return
        if self.buffer.ack(seq):
            self.ack_events.append(seq)
            self.rto = self.rto_base
            self.busy = self.busy_base
        if self.next_seq <= seq:
            self.next_seq = seq + 1
        self.deadline = now + self.rto if len(self.buffer) and self._in_flight() else _NO_TIME

    def _nack(self, seq, reason, now):
        if not isinstance(seq, int) or not isinstance(reason, str):
            raise ValueError("bad NACK")
        if reason == "replay":
            self.nack_errors += 1  # the record is gone: make it visible in sys/linkerr
            self._ack(seq, now)
            return
        floor = self.busy
        if reason != "busy":
            self.nack_errors += 1
            floor = max(floor, self.error_backoff)
        self.hold_until = now + self._jitter(floor)
        self.busy = min(self.busy * 2, self.max_backoff)
        if seq < self.next_seq:
            self.next_seq = seq  # resend from there after the back-off
        self.deadline = _NO_TIME

    # ---- output ----
    def _in_flight(self):
        return self.buffer.index_of(self.next_seq) if self.next_seq else 0

    def _held(self, now):
        if self.hold_until == _NO_TIME:
            return False
        if now - self.hold_until < 0:
            return True
        self.hold_until = _NO_TIME
        return False

    def poll(self, now):
        """The next frame to write (a memoryview valid until the next call), or None."""
        if self.hello_due:
            self.hello_due = False
            return self.encoder.encode(frame.HELLO, self.hello_body())
        if self.results:
            return self.encoder.encode(frame.COMMAND_RESULT, self.results.pop(0))
        buf = self.buffer
        if self.deadline != _NO_TIME and now - self.deadline >= 0:
            self.retransmits += 1
            self.next_seq = 0  # go back to the oldest unacked record
            self.rto = min(self.rto * 2, self.max_rto)
            self.deadline = _NO_TIME
            self.hello_due = True
            return self.poll(now)
        i = self._in_flight()
        if self._held(now) or i >= self.window or i >= len(buf):
            body = self.ota_get
            if body is None:
                return None
            self.ota_get = None
            return self.encoder.encode(_OTA_GET, body)
        seq = buf.seq_at(i)
        self.next_seq = seq + 1
        if seq > self.sent_high:
            self.sent_high = seq
        if self.deadline == _NO_TIME:
            self.deadline = now + self._jitter(self.rto)
        enc = self.encoder  # the record read from flash into the frame's place
        return enc.encode(frame.RECORD, None, buf.read(i, enc.room))

    def send_result(self, body):
        if len(self.results) < _MAX_RESULTS:
            self.results.append(body)
