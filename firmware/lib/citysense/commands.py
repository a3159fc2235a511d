"""Operator COMMANDs: verify, check the binding and the id, apply, answer signed.

A COMMAND is a COSE_Sign1 from the fleet operator key (kid b"operator"), payload
(protocol 2) {1: id, 2: action, 3: args, 4: device id, 5: gateway id or "*", 6: expiry
in Unix ms}. In this order, each failure answered with a refusal:
1. the signature (else "rejected: bad-signature", ...);
2. the payload's shape; a payload without keys 4-6 is a protocol-1 command, bound to
   no device: "rejected: unbound command (protocol 1)";
3. key 4 must be this device's id ("rejected: wrong device"): a command signed for
   node A and republished on B's topic is refused by B;
4. key 6 must lie ahead of the node's clock ("rejected: expired"). The clock is the
   gateway's TIME (the gateway sends one in answer to every HELLO, before it routes a
   command to the node). A node that has had no TIME since boot has no clock (the
   ESP32's RTC is not battery-backed) and refuses every command: "rejected: no clock".
   Key 5 (the gateway) is the gateway's to check: the node does not know its id.
5. the id must be strictly greater than the last accepted one, which is persisted
   (/state/cmd) BEFORE the action runs: a reboot command cannot loop, a replay is
   refused even across power cuts. Checks 3-4 come first so that a command refused for
   its binding does not move the id (a republished high id must not lock a node out).
Every COMMAND gets a COMMAND_RESULT {1: id, 2: ok, 3: detail} signed by the device; a
forged or unparseable one is answered with the id read from the unverified payload if
any (else 0) and ok = false.
"""

from citysense import cbor, cose, state

OPERATOR_KID = b"operator"


def _range(lo, hi):
    def check(v):
        return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi

    return check


_HEX = "0123456789abcdef"
# action -> (argument name, validator) ; None: no argument
# (gateway/protocol/commands.py ACTIONS says the same; tests/protocol holds them equal)
ACTIONS = {
    "set_interval": ("interval_s", _range(1, 86400)),
    "set_batch": ("batch", _range(1, 64)),
    "sync_now": None,
    "reboot": None,
    # a bundle id (64 lowercase hex): fetch it (citysense/fetch.py), stage it (ota.py)
    "update": (
        "bundle",
        lambda v: isinstance(v, str) and len(v) == 64 and not v.strip("0123456789abcdef"),
    ),
}


def _unverified_id(body):
    try:
        payload = cose.parse1(body)[2]
        cid = cbor.loads(payload)[1]
        return cid if isinstance(cid, int) and cid >= 0 else 0
    except Exception:
        return 0


class Commands:
    def __init__(self, operator_pub, seed, kid, apply, clock):
        self.operator = operator_pub
        self.seed = seed
        self.kid = kid
        self.apply = apply  # apply(action, value) -> detail str (raises ValueError)
        self.clock = clock  # clock() -> Unix ms, or None before the first TIME
        self.last_id = state.load("cmd", 0)
        self.rejected = 0

    def result(self, cid, ok, detail):
        payload = cbor.dumps({1: cid, 2: ok, 3: detail})
        return cose.sign1(self.seed, self.kid, payload)

    def _reject(self, cid, detail):
        self.rejected += 1
        return self.result(cid, False, detail)

    def _unbound(self, m):
        """Why this command is not for this node now (None: it is)."""
        dev, gw, exp = m.get(4), m.get(5), m.get(6)
        if dev is None and gw is None and exp is None:
            return "unbound command (protocol 1)"
        if not isinstance(dev, str) or not isinstance(gw, str) or not isinstance(exp, int):
            return "malformed payload"
        if dev.encode() != self.kid:
            return "wrong device"
        now = self.clock()
        if now is None:
            return "no clock"
        if now >= exp:
            return "expired"
        return None

    def handle(self, body):
        """One COMMAND body -> the signed COMMAND_RESULT body."""
        if self.operator is None:
            return self._reject(_unverified_id(body), "rejected: no operator key")
        try:
            payload = cose.verify1(self.operator, body, OPERATOR_KID)[1]
        except ValueError as exc:
            reason = getattr(exc, "reason", None) or "malformed"
            return self._reject(_unverified_id(body), "rejected: " + reason)
        try:
            m = cbor.loads(payload)
            cid, action, args = m[1], m[2], m.get(3, {})
            if not isinstance(cid, int) or cid < 0 or not isinstance(action, str):
                raise ValueError
            if not isinstance(args, dict):
                raise ValueError
        except Exception:
            return self._reject(0, "rejected: malformed payload")
        why = self._unbound(m)
        if why is not None:
            return self._reject(cid, "rejected: " + why)
        if cid <= self.last_id:
            return self._reject(cid, "rejected: replay (id %d <= %d)" % (cid, self.last_id))
        self.last_id = cid
        state.store("cmd", cid)
        if action not in ACTIONS:
            return self._reject(cid, "rejected: unknown action " + action[:32])
        spec = ACTIONS[action]
        value = None
        if spec is not None:
            value = args.get(spec[0])
            if not spec[1](value):
                return self._reject(cid, "rejected: bad argument " + spec[0])
        try:
            return self.result(cid, True, self.apply(action, value))
        except ValueError as exc:
            return self._reject(cid, "failed: %s" % exc)
