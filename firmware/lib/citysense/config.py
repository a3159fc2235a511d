"""Node configuration from the device filesystem (written by citysense-provision).

`load()` never raises: a missing or corrupt file gives a `problem` string that the node
reports in HELLO (key 8) while it waits for provisioning, instead of crash-looping.
Fatal problems: config-missing, config-corrupt, config-invalid, key-missing, key-corrupt.
Not fatal (records flow, COMMANDs are refused): operator-key-missing.
Runtime overrides set by COMMANDs (interval, batch) live in /state and win over the file.

The node needs this module once, at boot: `app` imports it, loads, and drops it from
`sys.modules` so its code does not hold heap for the node's life. The `Config` object
itself is therefore defined in `app`.
"""

import json
import os

from citysense import state

CONFIG = "config/device.json"
KEY = "config/device.key"
OPERATOR = "config/operator.pub"
# the device-id rule (citysense_formats/devid.py): 1-64 of these, not starting with . _ -
_ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"


def _read(path, limit=2048):
    size = os.stat(path)[6]  # read what is there: no limit-sized buffer on a tight heap
    if size > limit:
        raise ValueError("too big")
    with open(path, "rb") as f:
        return f.read(size)


def _id_ok(did):
    if not isinstance(did, str) or not 0 < len(did) <= 64 or did[0] in "._-":
        return False
    for c in did:
        if c not in _ID_CHARS:
            return False
    return True


def _fields(cfg, d):
    if not isinstance(d, dict):
        return False
    did = d.get("device_id")
    if not _id_ok(did):
        return False
    cfg.device_id = did
    for key in ("interval_s", "batch"):
        v = d.get(key, getattr(cfg, key))
        if not isinstance(v, int) or isinstance(v, bool) or not 0 < v <= 86400:
            return False
        setattr(cfg, key, v)
    link = d.get("link", {})
    if not isinstance(link, dict):
        return False
    for key in cfg.link:  # the defaults (app.Config); only their values are replaced
        v = link.get(key, cfg.link[key])
        if not isinstance(v, int) or v < 0:
            return False
        cfg.link[key] = v
    sensors = d.get("sensors", cfg.sensors)
    if not isinstance(sensors, list) or not all(isinstance(s, str) for s in sensors):
        return False
    cfg.sensors = sensors
    return cfg.batch <= 64


def load(cfg):
    """Fill `cfg` (an `app.Config`, defaults set) from the files; sets `cfg.problem`."""
    try:
        raw = _read(CONFIG)
    except OSError:
        cfg.problem = "config-missing"
        return cfg
    except ValueError:
        cfg.problem = "config-corrupt"
        return cfg
    try:
        d = json.loads(raw)
        raw = None
    except ValueError:
        cfg.problem = "config-corrupt"
        return cfg
    if not _fields(cfg, d):
        cfg.problem = "config-invalid"
        return cfg
    try:
        seed = _read(KEY, 64)
    except (OSError, ValueError):
        cfg.problem = "key-missing"
        return cfg
    if len(seed) != 32:
        cfg.problem = "key-corrupt"
        return cfg
    cfg.seed = seed
    try:
        pub = _read(OPERATOR, 64)
        cfg.operator = pub if len(pub) == 32 else None
    except (OSError, ValueError):
        pass
    if cfg.operator is None:
        cfg.problem = "operator-key-missing"
    cfg.interval_s = state.load("interval", cfg.interval_s)
    cfg.batch = state.load("batch", cfg.batch)
    return cfg
