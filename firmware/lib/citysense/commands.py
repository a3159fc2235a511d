"""Operator COMMANDs: verify, check the id, apply, answer with a signed result.

A COMMAND is a COSE_Sign1 from the fleet operator key (kid b"operator"), payload
{1: id, 2: action, 3: args}. The id must be strictly greater than the last accepted
one, which is persisted (/state/cmd) BEFORE the action runs: a reboot command cannot
loop, a replay is refused even across power cuts. Every COMMAND gets a COMMAND_RESULT
{1: id, 2: ok, 3: detail} signed by the device; a forged or unparseable one is answered
with the id read from the unverified payload if any (else 0) and ok = false.
"""

from citysense import cbor, cose, state

OPERATOR_KID = b"operator"


def _range(lo, hi):
    def check(v):
        return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi

    return check


# action -> (argument name, validator) ; None: no argument
ACTIONS = {
    "set_interval": ("interval_s", _range(1, 86400)),
    "set_batch": ("batch", _range(1, 64)),
    "sync_now": None,
    "reboot": None,
}


def _unverified_id(body):
    try:
        payload = cose.parse1(body)[2]
        cid = cbor.loads(payload)[1]
        return cid if isinstance(cid, int) and cid >= 0 else 0
    except Exception:
        return 0


class Commands:
    def __init__(self, operator_pub, seed, kid, apply):
        self.operator = operator_pub
        self.seed = seed
        self.kid = kid
        self.apply = apply  # apply(action, value) -> detail str (raises ValueError)
        self.last_id = state.load("cmd", 0)
        self.rejected = 0

    def result(self, cid, ok, detail):
        payload = cbor.dumps({1: cid, 2: ok, 3: detail})
        return cose.sign1(self.seed, self.kid, payload)

    def _reject(self, cid, detail):
        self.rejected += 1
        return self.result(cid, False, detail)

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
