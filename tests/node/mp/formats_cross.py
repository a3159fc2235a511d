# Under micropython (96k heap), cwd = a flash folder holding config/device.key and
# config/operator.pub: the firmware's own config.py and state.py answer one request per
# stdin line, for tests/node/test_formats_cross.py to hold against citysense_formats.
#   defaults          -> json of app.Config's defaults
#   config PATH       -> config.load() of PATH (as config/device.json): "ok JSON" of
#                        what the node took, or "refused PROBLEM"
#   store N           -> state.store("seq", N); the file's bytes, hex
#   load HEX          -> state/seq := bytes; state.load("seq", -1)
import gc
import json
import sys
from binascii import hexlify, unhexlify

# the heap laid out as the node boots it (main.py): frame buffers, then the app
from citysense import frame

_enc, _dec = frame.Encoder(), frame.Decoder()
from citysense import preload  # noqa: E402

preload.run()
from citysense import app, config, state  # noqa: E402


def taken(cfg):
    return {
        "device_id": cfg.device_id,
        "interval_s": cfg.interval_s,
        "batch": cfg.batch,
        "link": cfg.link,
        "sensors": cfg.sensors,
    }


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def answer(line):
    verb, _, arg = line.partition(" ")
    if verb == "defaults":
        return json.dumps(taken(app.Config("esp32-default")))
    if verb == "config":
        config.CONFIG = arg  # the test wrote each case to its own file
        cfg = config.load(app.Config("esp32-default"))
        if cfg.problem is not None:
            return "refused " + cfg.problem
        return "ok " + json.dumps(taken(cfg))
    if verb == "store":
        state.store("seq", int(arg))
        with open("state/seq", "rb") as f:
            return hexlify(f.read()).decode()
    if verb == "load":
        state.ensure_dir("state")
        write("state/seq", unhexlify(arg))
        return str(state.load("seq", -1))
    return "unknown " + verb


while True:
    line = sys.stdin.readline()
    if not line:
        break
    print(answer(line.strip()))
    gc.collect()
